"""The delivery worker (``keel worker``): claims due deliveries from the queue
(:mod:`api.webhooks.queue`), sends them concurrently, and records every attempt.

Any number of workers can run against one database. Throughput comes from doing per batch what
can be done per batch: one claim statement for up to ``batch_size`` deliveries, up to
``concurrency`` requests in flight over keep-alive connections (:mod:`api.webhooks.lanes`), and
one transaction that writes a whole batch of outcomes and attempts while the next requests fly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import psycopg

from api.db.engine import libpq_url, make_async_engine
from api.flags import schedules as flag_schedules
from api.settings import Settings
from api.webhooks import signing
from api.webhooks.config import WorkerConfig
from api.webhooks.drain import drain_until_idle
from api.webhooks.lanes import Lanes
from api.webhooks.messages import NOTIFY_CHANNEL
from api.webhooks.queue import DeliveryQueue, WorkerStats
from api.webhooks.sender import Job, Outcome, attempt

log = logging.getLogger("keel.webhooks.worker")


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: the unit connections are kept per."""
    start = url.find("//") + 2
    end = url.find("/", start)
    return url if end < 0 else url[:end]


def worker_name() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """One worker process's delivery loop. Use as ``async with Worker(settings) as w: await w.run()``;
    tests call :meth:`tick` or :meth:`run_until_idle` instead."""

    def __init__(self, settings: Settings, config: WorkerConfig | None = None) -> None:
        if not settings.database_url:
            raise ValueError("the worker needs settings.database_url")
        self.settings = settings
        self.config = config or WorkerConfig()
        self.name = worker_name()
        self.queue = DeliveryQueue(
            settings.database_url, worker=self.name, schedule=settings.webhook_retry_schedule,
            lease_seconds=self.config.lease_seconds, per_endpoint=self.config.per_endpoint,
            reap_interval=self.config.reap_interval,
        )  # fmt: skip
        self._keys: dict[str, bytes] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        #: Claimed and not yet finished (in flight, or waiting for their endpoint's turn).
        self._held = 0
        self._active: dict[uuid.UUID, int] = {}
        self._waiting: dict[uuid.UUID, deque[Job]] = {}
        #: Held per endpoint. One with twice its share held is left out of claims, so a big backlog
        #: for one slow customer never fills the worker while others' deliveries wait behind it.
        self._held_by: dict[uuid.UUID, int] = {}
        self._saturation = self.queue.share
        self._results: list[Outcome] = []
        self._wake = asyncio.Event()
        self._results_ready = asyncio.Event()
        self._lanes: Lanes | None = None
        #: The saturated endpoints of the last claim that found nothing, and when it ran. Such a claim
        #: reads past every due row of those endpoints (a slow customer's whole backlog; the bench's
        #: 30,000 rows cost Postgres ~27 ms a claim), and the loop would repeat it each time a
        #: saturated endpoint frees a slot: it stands for a poll interval instead, or until a publish.
        self._dry: tuple[frozenset[uuid.UUID], float] | None = None
        #: When the last publish was notified (monotonic): a claim that found nothing stands only for
        #: what was committed before it started. (A flag reset by any claim was consumed by a claim
        #: that did not leave the saturated endpoint out, and the urgent message then waited for
        #: the next publish: tests/test_webhook_rounds.py, with other tests publishing.)
        self._notified_at = 0.0

    @property
    def stats(self) -> WorkerStats:
        return self.queue.stats

    async def __aenter__(self) -> Worker:
        await self.queue.open()
        self._lanes = Lanes(
            allow_private=self.settings.webhook_allow_private_targets,
            per_origin=self.config.per_endpoint,
            timeout=self.config.request_timeout,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.queue.release()
        if self._lanes is not None:
            await self._lanes.aclose()
        await self.queue.close()

    async def claim(self, limit: int) -> list[Job]:
        """Lease up to ``limit`` due deliveries, none of an endpoint this worker holds its fill of."""
        saturated = [e for e, held in self._held_by.items() if held >= self._saturation]
        if saturated and self._dry is not None:
            excluded, at = self._dry
            # Leaving out at least the same endpoints, with nothing published since, finds nothing
            # again (save retries falling due meanwhile, which the next look finds).
            if (
                self._notified_at < at
                and time.monotonic() - at < self.config.poll_interval
                and excluded.issubset(saturated)
            ):
                return []
        started = time.monotonic()
        jobs = await self.queue.claim(limit, saturated, self._held_by)
        if saturated and not jobs:
            self._dry = (frozenset(saturated), started)
        elif jobs and self._dry is not None and self._dry[0].issubset(saturated):
            self._dry = None  # found something while leaving those endpoints out
        return jobs

    async def record(self, outcomes: list[Outcome]) -> None:
        await self.queue.record(outcomes)

    async def seconds_until_due(self, organization_id: uuid.UUID | None = None) -> float | None:
        return await self.queue.seconds_until_due(organization_id)

    # --- sending ------------------------------------------------------------------------------

    def _key(self, secret: str) -> bytes:
        key = self._keys.get(secret)
        if key is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            key = self._keys[secret] = signing.secret_key(secret)
        return key

    async def _send(self, job: Job) -> Outcome:
        assert self._lanes is not None
        keys = [self._key(s) for s in job.secrets]
        try:
            url = self._lanes.url(job.url)
        except (httpx.InvalidURL, ValueError) as exc:
            # Only a URL changed behind the API's back gets here (the API validates every URL).
            return Outcome(
                job=job, started_at=datetime.now(UTC), duration_ms=0,
                error_class="invalid_url", error_detail=str(exc)[:500],
            )  # fmt: skip
        lane = self._lanes.lane(origin(job.url))
        lane.busy += 1
        try:
            # ``within`` bounds the whole attempt (connecting, the pool's wait, writing, reading): per
            # step timeouts of the same length under it never fire first, and each would schedule
            # and cancel a timer per read and write (which bench_webhooks.py's baseline never paid).
            return await attempt(lane.transport, url, job, keys, within=self.config.request_timeout)
        finally:
            lane.busy -= 1

    # --- loops --------------------------------------------------------------------------------

    async def tick(self) -> int:
        """One claim, every claimed delivery attempted, every outcome recorded; returns how many."""
        jobs = await self.claim(self.config.batch_size)
        if not jobs:
            return 0
        outcomes = await asyncio.gather(*(self._send(job) for job in jobs))
        await self.record(list(outcomes))
        return len(jobs)

    async def run_until_idle(
        self,
        *,
        max_seconds: float = 60.0,
        done: Callable[[], bool] | None = None,
        horizon: float = 30.0,
        organization_id: uuid.UUID | None = None,
    ) -> WorkerStats:
        """Tick until nothing is due within ``horizon`` seconds (or ``done()`` says so); for tests
        and ``keel worker --until-idle`` (:func:`api.webhooks.drain.drain_until_idle`)."""
        await drain_until_idle(
            self, max_seconds=max_seconds, done=done, horizon=horizon, organization_id=organization_id,
            poll=0.2, name="the worker",
        )  # fmt: skip
        return self.stats

    async def run(self, stop: asyncio.Event | None = None) -> WorkerStats:
        """Deliver until ``stop`` is set; then finish what is in flight and release the rest."""
        stop = stop or asyncio.Event()
        flushed = asyncio.Event()
        flusher = asyncio.create_task(self._flush_loop(flushed))
        listener = asyncio.create_task(self._listen())
        scheduler = asyncio.create_task(self._flag_schedules())
        stopper = asyncio.create_task(stop.wait())
        batch = min(self.config.batch_size, self.config.concurrency)
        try:
            while not stop.is_set():
                self._wake.clear()
                room = self.config.concurrency - self._held
                claimed = 0
                if room >= batch or not self._held:
                    try:
                        jobs = await self.claim(min(room, self.config.batch_size))
                    except psycopg.Error:
                        log.exception("claiming failed; retrying shortly")
                        await self.queue.reconnect_claim()
                        jobs = []
                    claimed = len(jobs)
                    for job in jobs:
                        self._start(job)
                # A claim can come back short because it takes few of any one endpoint: claim again
                # until one finds nothing (or the worker is full).
                if claimed and self.config.concurrency - self._held >= batch:
                    await asyncio.sleep(0)
                    continue
                wait = self.config.poll_interval
                if not claimed and not self._held:
                    with contextlib.suppress(psycopg.Error):
                        until = await self.seconds_until_due()
                        if until is not None:
                            wait = min(wait, max(until, 0.005))
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait({waker, stopper}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            stopper.cancel()
            self._waiting.clear()  # not started: released below with the rest of the leases
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=self.config.request_timeout + 5)
            for task in self._inflight:
                task.cancel()
            flushed.set()
            try:
                await asyncio.wait_for(flusher, timeout=30)
            except Exception:
                log.exception("recording the last outcomes failed")
            listener.cancel()
            scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await scheduler
            released = await self.queue.release()
            if released:
                log.info("released %d leased deliveries", released)
        return self.stats

    def _start(self, job: Job) -> None:
        self._held += 1
        self._held_by[job.endpoint_id] = self._held_by.get(job.endpoint_id, 0) + 1
        if self._active.get(job.endpoint_id, 0) >= self.config.per_endpoint:
            self._waiting.setdefault(job.endpoint_id, deque()).append(job)
            return
        self._launch(job)

    def _launch(self, job: Job) -> None:
        self._active[job.endpoint_id] = self._active.get(job.endpoint_id, 0) + 1
        task = asyncio.create_task(self._deliver(job))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _finished(self, job: Job) -> Job | None:
        """Account for a finished delivery; the endpoint's next waiting one, which the same request
        slot sends next (a task a slot, not one a delivery: what a backlog's deliveries cost apart
        from sending is the worker's overhead over the bench's baseline)."""
        self._held -= 1
        held_by = self._held_by[job.endpoint_id] - 1
        if held_by:
            self._held_by[job.endpoint_id] = held_by
        else:
            del self._held_by[job.endpoint_id]
        # Wake the claim loop only when something changes what it may claim: room for a batch
        # opens up, or an endpoint stops being saturated (not on every finished request).
        batch = min(self.config.batch_size, self.config.concurrency)
        if self._held == self.config.concurrency - batch or held_by == self._saturation - 1:
            self._wake.set()
        waiting = self._waiting.get(job.endpoint_id)
        if waiting:
            return waiting.popleft()
        self._waiting.pop(job.endpoint_id, None)
        left = self._active[job.endpoint_id] - 1
        if left:
            self._active[job.endpoint_id] = left
        else:
            del self._active[job.endpoint_id]
        return None

    async def _deliver(self, job: Job) -> None:
        """One of an endpoint's request slots: this delivery, then its endpoint's next waiting ones
        in claim order, until none waits."""
        current: Job | None = job
        while current is not None:
            try:
                outcome = await self._send(current)
                # Appended only now: the flusher swaps the list out while requests are in flight.
                self._results.append(outcome)
                self._results_ready.set()
            except BaseException:
                if (following := self._finished(current)) is not None:
                    self._launch_after_failure(following)
                raise
            current = self._finished(current)

    def _launch_after_failure(self, job: Job) -> None:
        # The slot's task is going away (cancelled at shutdown): the next one takes its place.
        self._active[job.endpoint_id] -= 1
        self._launch(job)

    async def _flush_loop(self, finished: asyncio.Event) -> None:
        while True:
            if not self._results:
                if finished.is_set():
                    return
                self._results_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._results_ready.wait(), 0.05)
                continue
            if not finished.is_set():
                # Let a round gather before recording it: a statement costs the worker and Postgres far
                # more than a row of it (bench_webhooks.py), and leases outlast this wait by far.
                await asyncio.sleep(self.config.record_linger)
            batch, self._results = self._results, []
            try:
                await self.record(batch)
            except Exception as exc:
                # Nothing of the batch was committed (one transaction): keep it and try again.
                log.exception("recording %d outcomes failed; retrying", len(batch))
                self._results = batch + self._results
                if isinstance(exc, psycopg.Error):
                    await self.queue.reconnect_write()
                await asyncio.sleep(1)

    async def _flag_schedules(self) -> None:
        """Apply scheduled flag changes as they fall due (the ``flag-schedules`` flow does the
        same each minute; a change is claimed with SKIP LOCKED, so it is applied once)."""
        engine = make_async_engine(self.settings.database_url or "", pool_size=1)
        try:
            while True:
                try:
                    applied = await flag_schedules.apply_due_with(engine)
                    if applied:
                        log.info("applied %d scheduled flag changes", applied)
                except Exception:
                    log.exception("applying scheduled flag changes failed; retrying shortly")
                await asyncio.sleep(flag_schedules.APPLY_INTERVAL)
        finally:
            await engine.dispose()

    async def _listen(self) -> None:
        """Wake on NOTIFY from publishers; the poll interval covers a lost connection."""
        url = libpq_url(self.settings.database_url or "")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for _ in conn.notifies():
                        self._notified_at = time.monotonic()
                        self._wake.set()
            except psycopg.Error:
                log.warning("lost the LISTEN connection; polling until it is back", exc_info=True)
                await asyncio.sleep(1)


def run_worker(settings: Settings, config: WorkerConfig, *, until_idle: bool = False) -> WorkerStats:
    """Run a worker in this process until SIGTERM or SIGINT (graceful: in-flight requests finish,
    leases are released), or until nothing is due with ``until_idle``."""

    # A line per request would cost more than the request: outcomes are in webhook_attempts.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def main() -> WorkerStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # The one outbound worker also delivers audit streams (imported here: they use this module).
        from api.audit.streams.delivery import StreamWorker

        async with Worker(settings, config) as worker, StreamWorker(settings, name=worker.name) as streams:
            log.info("webhook worker %s started", worker.name)
            # What start-up built (the modules, their tables and types: ~120,000 objects) lives as
            # long as the process: out of the cycle collector's way, whose every full collection
            # would walk all of it again while the deliveries' short-lived objects come and go.
            gc.collect()
            gc.freeze()
            if until_idle:
                stats = await worker.run_until_idle(max_seconds=float("inf"))
                await streams.run_until_idle(max_seconds=float("inf"))
                return stats
            stream_loop = asyncio.create_task(streams.run(stop))
            try:
                return await worker.run(stop)
            finally:
                stop.set()
                await stream_loop

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(main())
