"""The delivery worker (``keel worker``): claims due deliveries, sends them concurrently, records
every attempt, and schedules the next one.

Any number of workers can run against one database. Each claims a batch of due rows with
``FOR UPDATE SKIP LOCKED`` and leases them (``leased_until``); a worker that dies mid-delivery
leaves its lease to expire, and whichever worker sees it first records the lost attempt
(``worker_lost``) and makes the delivery due again: at least once, never never.

Throughput comes from doing per-batch what can be done per batch: one claim statement for up to
``batch_size`` deliveries, up to ``concurrency`` requests in flight on one keep-alive client, and
one transaction that writes a whole batch of outcomes and attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from api.auth.context import Actor
from api.db.base import new_id
from api.db.engine import libpq_url, make_async_engine, make_sessionmaker
from api.db.models import DeliveryStatus, WebhookEndpoint
from api.settings import Settings
from api.webhooks import signing
from api.webhooks.endpoints import disable_endpoint
from api.webhooks.lanes import Lanes
from api.webhooks.messages import NOTIFY_CHANNEL
from api.webhooks.sender import Job, Outcome, attempt, envelope

log = logging.getLogger("keel.webhooks.worker")

#: Continuous failure for this long disables an endpoint.
FAILURE_WINDOW = timedelta(days=5)
#: A Retry-After is honoured up to a day.
MAX_RETRY_AFTER = 86_400.0
JITTER = 0.10

CLAIM = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE status IN ('pending', 'failed') AND next_attempt_at IS NOT NULL AND next_attempt_at <= now()
      AND NOT (endpoint_id = ANY(%(saturated)s))
    ORDER BY next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET status = 'delivering', leased_until = now() + make_interval(secs => %(lease)s),
    leased_by = %(worker)s, last_attempt_at = now(), updated_at = now()
FROM due, webhook_endpoints e, webhook_messages m
WHERE d.id = due.id AND e.id = d.endpoint_id AND m.id = d.webhook_message_id
RETURNING d.id, d.organization_id, d.endpoint_id, d.attempts, e.url,
          e.enabled AND e.deleted_at IS NULL, e.secret,
          CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END,
          m.id, m.event_type, m.created_at, m.payload::text
"""

REAP = """
WITH lost AS (
    SELECT id FROM webhook_deliveries
    WHERE status = 'delivering' AND leased_until < now()
    LIMIT 500
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1,
    status = CASE WHEN d.attempts + 1 >= %(max)s THEN 'exhausted' ELSE 'failed' END,
    next_attempt_at = CASE WHEN d.attempts + 1 >= %(max)s THEN NULL ELSE now() END,
    last_status_code = NULL, last_error = 'worker_lost: the worker stopped before recording an outcome',
    leased_until = NULL, leased_by = NULL, updated_at = now()
FROM lost
WHERE d.id = lost.id
RETURNING d.id, d.organization_id, d.endpoint_id, d.attempts, d.last_attempt_at
"""

COMPLETE = """
UPDATE webhook_deliveries d
SET status = u.status, attempts = u.attempt, next_attempt_at = u.next_at, last_attempt_at = u.started_at,
    last_status_code = u.code, last_error = u.error, succeeded_at = u.succeeded_at,
    leased_until = NULL, leased_by = NULL, updated_at = now()
FROM unnest(%s::uuid[], %s::text[], %s::int[], %s::timestamptz[], %s::timestamptz[], %s::int[],
            %s::text[], %s::timestamptz[]) AS u(id, status, attempt, next_at, started_at, code, error,
                                                 succeeded_at)
WHERE d.id = u.id AND d.status = 'delivering' AND d.leased_by = %s
"""

RECORD_ATTEMPTS = """
INSERT INTO webhook_attempts (id, organization_id, endpoint_id, delivery_id, attempt_number, started_at,
                              duration_ms, status_code, response_headers, response_body, error_class,
                              error_detail)
SELECT u.id, u.org, u.endpoint, u.delivery, u.n, u.started_at, u.duration, u.code, u.headers::jsonb,
       u.body, u.error_class, u.error_detail
FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::int[], %s::timestamptz[], %s::int[],
            %s::int[], %s::text[], %s::text[], %s::text[], %s::text[])
     AS u(id, org, endpoint, delivery, n, started_at, duration, code, headers, body, error_class,
          error_detail)
"""

PARK = """
UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, leased_until = NULL,
    leased_by = NULL, last_error = 'endpoint disabled', updated_at = now()
WHERE id = ANY(%s) AND status = 'delivering' AND leased_by = %s
"""

RELEASE = """
UPDATE webhook_deliveries
SET status = CASE WHEN attempts = 0 THEN 'pending' ELSE 'failed' END, next_attempt_at = now(),
    leased_until = NULL, leased_by = NULL, last_attempt_at = NULL, updated_at = now()
WHERE leased_by = %s AND status = 'delivering'
"""

NEXT_DUE = """
SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now())::float FROM webhook_deliveries
WHERE status IN ('pending', 'failed') AND next_attempt_at IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    #: Requests in flight at once.
    concurrency: int = 256
    #: Requests in flight to one endpoint at once (the rest of its claimed deliveries wait their turn):
    #: a backlog for one customer never opens hundreds of connections to their server.
    per_endpoint: int = 32
    #: Deliveries claimed per statement.
    batch_size: int = 128
    #: How long a claim is held; must outlast a request (the timeout) with room to record it.
    lease_seconds: float = 60.0
    #: A 2xx must arrive within this many seconds, all told.
    request_timeout: float = 15.0
    #: Longest sleep between looks at the queue (a NOTIFY wakes the worker sooner).
    poll_interval: float = 1.0
    reap_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.batch_size < 1 or self.per_endpoint < 1:
            raise ValueError("concurrency, batch size and per-endpoint concurrency must be at least 1")
        if self.request_timeout <= 0 or self.lease_seconds <= self.request_timeout:
            raise ValueError("the lease must be longer than the request timeout")


@dataclass
class WorkerStats:
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    reaped: int = 0
    disabled: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


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
        self.schedule = settings.webhook_retry_schedule
        self.stats = WorkerStats()
        self._keys: dict[str, bytes] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        #: Claimed and not yet finished (in flight, or waiting for their endpoint's turn).
        self._held = 0
        self._active: dict[uuid.UUID, int] = {}
        self._waiting: dict[uuid.UUID, deque[Job]] = {}
        #: Held per endpoint. One with twice its share held is left out of claims, so a big backlog
        #: for one slow customer never fills the worker while others' deliveries wait behind it.
        self._held_by: dict[uuid.UUID, int] = {}
        self._saturation = 2 * self.config.per_endpoint
        self._results: list[Outcome] = []
        self._wake = asyncio.Event()
        self._results_ready = asyncio.Event()
        self._last_reap = 0.0
        self._claim_conn: psycopg.AsyncConnection[Any] | None = None
        self._write_conn: psycopg.AsyncConnection[Any] | None = None
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[Any] | None = None
        self._lanes: Lanes | None = None

    async def __aenter__(self) -> Worker:
        url = libpq_url(self.settings.database_url or "")
        self._claim_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        self._write_conn = await psycopg.AsyncConnection.connect(url)
        self._engine = make_async_engine(self.settings.database_url or "", pool_size=2)
        self._sessions = make_sessionmaker(self._engine)
        self._lanes = Lanes(
            allow_private=self.settings.webhook_allow_private_targets,
            connections=self.config.concurrency,
            per_origin=self.config.per_endpoint,
            timeout=self.config.request_timeout,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.release_leases()
        if self._lanes is not None:
            await self._lanes.aclose()
        for conn in (self._claim_conn, self._write_conn):
            if conn is not None:
                await conn.close()
        if self._engine is not None:
            await self._engine.dispose()

    # --- claiming ---------------------------------------------------------------------------

    def _key(self, secret: str) -> bytes:
        key = self._keys.get(secret)
        if key is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            key = self._keys[secret] = signing.secret_key(secret)
        return key

    async def claim(self, limit: int) -> list[Job]:
        """Lease up to ``limit`` due deliveries (none of a saturated endpoint); those of a disabled
        endpoint are parked instead."""
        assert self._claim_conn is not None
        await self._maybe_reap()
        saturated = [e for e, held in self._held_by.items() if held >= self._saturation]
        cursor = await self._claim_conn.execute(
            CLAIM,
            {"limit": limit, "lease": self.config.lease_seconds, "worker": self.name, "saturated": saturated},
        )
        jobs, parked = [], []
        for (delivery_id, org_id, endpoint_id, attempts, url, live, secret, previous, message_id,
             event_type, created_at, payload) in await cursor.fetchall():  # fmt: skip
            if not live:
                parked.append(delivery_id)
                continue
            jobs.append(
                Job(
                    delivery_id=delivery_id, organization_id=org_id, endpoint_id=endpoint_id,
                    attempt_number=attempts + 1, url=url,
                    secrets=[secret, previous] if previous else [secret],
                    webhook_id=f"msg_{message_id.hex}", body=envelope(event_type, created_at, payload),
                )
            )  # fmt: skip
        if parked:
            await self._claim_conn.execute(PARK, (parked, self.name))
        return jobs

    async def _maybe_reap(self) -> None:
        if time.monotonic() - self._last_reap < self.config.reap_interval:
            return
        self._last_reap = time.monotonic()
        await self.reap()

    async def reap(self) -> int:
        """Deliveries whose worker died holding them: record the lost attempt, make them due again."""
        assert self._claim_conn is not None
        async with self._claim_conn.transaction():
            cursor = await self._claim_conn.execute(REAP, {"max": len(self.schedule)})
            rows = await cursor.fetchall()
            if rows:
                now = datetime.now(UTC)
                columns = list(zip(*[
                    (new_id(), org, endpoint, delivery, n, started or now,
                     int(((now - started).total_seconds() if started else 0) * 1000), None, None, None,
                     "worker_lost", "the worker holding the lease stopped before recording an outcome")
                    for delivery, org, endpoint, n, started in rows
                ], strict=True))  # fmt: skip
                await self._claim_conn.execute(RECORD_ATTEMPTS, [list(c) for c in columns])
        if rows:
            self.stats.reaped += len(rows)
            log.warning("reclaimed %d deliveries from expired leases", len(rows))
        return len(rows)

    async def release_leases(self) -> int:
        """On shutdown: whatever this worker still holds becomes due again at once."""
        if self._claim_conn is None or self._claim_conn.closed:
            return 0
        cursor = await self._claim_conn.execute(RELEASE, (self.name,))
        return cursor.rowcount

    # --- attempting and recording -------------------------------------------------------------

    async def _send(self, job: Job) -> Outcome:
        assert self._lanes is not None
        keys = [self._key(s) for s in job.secrets]
        lane = self._lanes.pick(origin(job.url))
        self._lanes.busy[lane] += 1
        try:
            return await attempt(
                self._lanes.transports[lane], self._lanes.url(job.url), job, keys,
                within=self.config.request_timeout, timeouts=self._lanes.timeout,
            )  # fmt: skip
        finally:
            self._lanes.busy[lane] -= 1

    def _next_delay(self, outcome: Outcome) -> float | None:
        """Seconds until the next attempt, or None when the delivery is out of attempts."""
        made = outcome.job.attempt_number
        if made >= len(self.schedule):
            return None
        delay = self.schedule[made] * random.uniform(1 - JITTER, 1 + JITTER)
        if outcome.retry_after is not None and outcome.status_code in (429, 503):
            delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER))
        return delay

    async def record(self, outcomes: list[Outcome]) -> None:
        """Write a batch of outcomes and their attempts in one transaction; then disable endpoints
        that answered 410 or have failed for five days."""
        assert self._write_conn is not None
        now = datetime.now(UTC)
        ids: list[uuid.UUID] = []
        statuses: list[str] = []
        numbers: list[int] = []
        next_at: list[datetime | None] = []
        started: list[datetime] = []
        codes: list[int | None] = []
        errors: list[str | None] = []
        succeeded_at: list[datetime | None] = []
        gone: dict[uuid.UUID, str] = {}
        for o in outcomes:
            job = o.job
            ids.append(job.delivery_id)
            numbers.append(job.attempt_number)
            started.append(o.started_at)
            codes.append(o.status_code)
            if o.succeeded:
                statuses.append(DeliveryStatus.succeeded.value)
                next_at.append(None)
                errors.append(None)
                succeeded_at.append(o.started_at + timedelta(milliseconds=o.duration_ms))
                continue
            errors.append(o.summary)
            succeeded_at.append(None)
            delay = self._next_delay(o)
            if o.status_code == 410:
                gone[job.endpoint_id] = "the endpoint answered 410 Gone"
                statuses.append(DeliveryStatus.failed.value)
                next_at.append(None)
            elif delay is None:
                statuses.append(DeliveryStatus.exhausted.value)
                next_at.append(None)
            else:
                statuses.append(DeliveryStatus.failed.value)
                next_at.append(now + timedelta(seconds=delay))
        attempt_rows = [
            (new_id(), o.job.organization_id, o.job.endpoint_id, o.job.delivery_id,
             o.job.attempt_number, o.started_at, o.duration_ms, o.status_code,
             msgspec.json.encode(o.headers).decode() if o.headers is not None else None, o.body,
             o.error_class, o.error_detail)
            for o in outcomes
        ]  # fmt: skip
        recovered = {o.job.endpoint_id for o in outcomes if o.succeeded}
        failing: dict[uuid.UUID, datetime] = {}
        for o in sorted(outcomes, key=lambda o: o.started_at):
            if o.succeeded:
                failing.pop(o.job.endpoint_id, None)
            else:
                failing.setdefault(o.job.endpoint_id, o.started_at)
        async with self._write_conn.transaction():
            await self._write_conn.execute(
                COMPLETE, (ids, statuses, numbers, next_at, started, codes, errors, succeeded_at, self.name)
            )
            await self._write_conn.execute(
                RECORD_ATTEMPTS, [list(c) for c in zip(*attempt_rows, strict=True)]
            )
            if recovered - set(failing):
                await self._write_conn.execute(
                    "UPDATE webhook_endpoints SET failing_since = NULL"
                    " WHERE id = ANY(%s) AND failing_since IS NOT NULL",
                    (list(recovered - set(failing)),),
                )
            overdue: list[uuid.UUID] = []
            if failing:
                cursor = await self._write_conn.execute(
                    "UPDATE webhook_endpoints e SET failing_since = CASE WHEN u.id = ANY(%s) THEN u.since"
                    " ELSE coalesce(e.failing_since, u.since) END"
                    " FROM unnest(%s::uuid[], %s::timestamptz[]) AS u(id, since) WHERE e.id = u.id"
                    " RETURNING e.id, e.enabled AND e.failing_since < now() - make_interval(secs => %s)",
                    (list(recovered), list(failing), list(failing.values()),
                     FAILURE_WINDOW.total_seconds()),
                )  # fmt: skip
                overdue = [endpoint_id for endpoint_id, late in await cursor.fetchall() if late]
        for o in outcomes:
            self.stats.attempts += 1
            if o.succeeded:
                self.stats.succeeded += 1
            else:
                self.stats.failed += 1
                key = o.error_class or f"http_{o.status_code}"
                self.stats.by_error[key] = self.stats.by_error.get(key, 0) + 1
        for endpoint_id in overdue:
            gone.setdefault(endpoint_id, f"every attempt failed for {FAILURE_WINDOW.days} days")
        for endpoint_id, reason in gone.items():
            # After the commit: the outcomes are recorded whatever happens here. A disable that fails
            # is logged; the endpoint's next failure asks again.
            try:
                await self._disable(endpoint_id, reason)
            except Exception:
                log.exception("could not disable webhook endpoint %s", endpoint_id)

    async def _disable(self, endpoint_id: uuid.UUID, reason: str) -> None:
        assert self._sessions is not None
        async with self._sessions() as session, session.begin():
            endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
            if endpoint is None or not endpoint.enabled or endpoint.deleted_at is not None:
                return
            await disable_endpoint(
                session, endpoint, reason=reason, actor=Actor.system("webhook-worker"), ctx=None
            )
        self.stats.disabled += 1
        log.warning("disabled webhook endpoint %s: %s", endpoint_id, reason)

    # --- loops --------------------------------------------------------------------------------

    async def tick(self) -> int:
        """One claim, every claimed delivery attempted, every outcome recorded; returns how many."""
        jobs = await self.claim(self.config.batch_size)
        if not jobs:
            return 0
        outcomes = await asyncio.gather(*(self._send(job) for job in jobs))
        await self.record(list(outcomes))
        return len(jobs)

    async def seconds_until_due(self, organization_id: uuid.UUID | None = None) -> float | None:
        assert self._claim_conn is not None
        if organization_id is None:
            cursor = await self._claim_conn.execute(NEXT_DUE)
        else:
            cursor = await self._claim_conn.execute(
                NEXT_DUE + " AND organization_id = %s", (organization_id,)
            )
        row = await cursor.fetchone()
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    async def run_until_idle(
        self,
        *,
        max_seconds: float = 60.0,
        done: Callable[[], bool] | None = None,
        horizon: float = 30.0,
        organization_id: uuid.UUID | None = None,
    ) -> WorkerStats:
        """Tick until nothing is due within ``horizon`` seconds (or ``done()`` says so); for tests
        and ``keel worker --until-idle``. Waits for scheduled retries that fall inside the horizon
        (of ``organization_id``'s deliveries only, when given: other work is delivered meanwhile)."""
        deadline = time.monotonic() + max_seconds
        while True:
            if await self.tick():
                continue
            if done is not None and done():
                return self.stats
            wait = await self.seconds_until_due(organization_id)
            if done is None and (wait is None or wait > horizon):
                return self.stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker was not idle within {max_seconds} s")
            await asyncio.sleep(min(wait if wait is not None else 0.2, 0.2))

    async def run(self, stop: asyncio.Event | None = None) -> WorkerStats:
        """Deliver until ``stop`` is set; then finish what is in flight and release the rest."""
        stop = stop or asyncio.Event()
        flushed = asyncio.Event()
        flusher = asyncio.create_task(self._flush_loop(flushed))
        listener = asyncio.create_task(self._listen())
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
                        await self._reconnect_claim()
                        jobs = []
                    claimed = len(jobs)
                    for job in jobs:
                        self._start(job)
                if claimed == batch and self.config.concurrency - self._held >= batch:
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
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            released = await self.release_leases()
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

    def _finished(self, job: Job) -> None:
        self._held -= 1
        held_by = self._held_by[job.endpoint_id] - 1
        if held_by:
            self._held_by[job.endpoint_id] = held_by
        else:
            del self._held_by[job.endpoint_id]
        waiting = self._waiting.get(job.endpoint_id)
        if waiting:
            self._launch(waiting.popleft())
        else:
            self._waiting.pop(job.endpoint_id, None)
        left = self._active[job.endpoint_id] - 1
        if left:
            self._active[job.endpoint_id] = left
        else:
            del self._active[job.endpoint_id]
        # Wake the claim loop only when something changes what it may claim: room for a batch
        # opens up, or an endpoint stops being saturated (not on every finished request).
        batch = min(self.config.batch_size, self.config.concurrency)
        if self._held == self.config.concurrency - batch or held_by == self._saturation - 1:
            self._wake.set()

    async def _deliver(self, job: Job) -> None:
        try:
            outcome = await self._send(job)
            # Appended only now: the flusher swaps the list out while requests are in flight.
            self._results.append(outcome)
            self._results_ready.set()
        finally:
            self._finished(job)

    async def _flush_loop(self, finished: asyncio.Event) -> None:
        while True:
            if not self._results:
                if finished.is_set():
                    return
                self._results_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._results_ready.wait(), 0.05)
                continue
            batch, self._results = self._results, []
            try:
                await self.record(batch)
            except Exception as exc:
                # Nothing of the batch was committed (one transaction): keep it and try again.
                log.exception("recording %d outcomes failed; retrying", len(batch))
                self._results = batch + self._results
                if isinstance(exc, psycopg.Error):
                    await self._reconnect_write()
                await asyncio.sleep(1)

    async def _reconnect_claim(self) -> None:
        await asyncio.sleep(1)
        with contextlib.suppress(Exception):
            if self._claim_conn is not None:
                await self._claim_conn.close()
        with contextlib.suppress(psycopg.Error):
            self._claim_conn = await psycopg.AsyncConnection.connect(
                libpq_url(self.settings.database_url or ""), autocommit=True
            )

    async def _reconnect_write(self) -> None:
        with contextlib.suppress(Exception):
            if self._write_conn is not None:
                await self._write_conn.close()
        with contextlib.suppress(psycopg.Error):
            self._write_conn = await psycopg.AsyncConnection.connect(
                libpq_url(self.settings.database_url or "")
            )

    async def _listen(self) -> None:
        """Wake on NOTIFY from publishers; the poll interval covers a lost connection."""
        url = libpq_url(self.settings.database_url or "")
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    async for _ in conn.notifies():
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
        async with Worker(settings, config) as worker:
            log.info("webhook worker %s started", worker.name)
            if until_idle:
                return await worker.run_until_idle(max_seconds=float("inf"))
            return await worker.run(stop)

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(main())
