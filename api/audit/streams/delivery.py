"""Delivering audit streams (run by ``keel worker`` beside the webhook loop).

Each stream is one ordered queue: its backlog is the chain itself (entries past ``delivered_seq``,
kept in Postgres anyway), so nothing is copied to deliver it. A worker leases a due stream with
one ``UPDATE … FOR UPDATE SKIP LOCKED`` (``leased_by``/``leased_until``); while it holds the
lease no other worker touches the stream, so any number of workers share the streams without
reordering one. It sends batches in seq order and moves ``delivered_seq`` only after the
destination accepted a batch (at least once: a batch whose answer was lost is sent again), and
only while it still holds the lease. Two things overlap with a batch in flight: reading the next
batch, and recording the previous one's acknowledgement (which must have held before the next
outcome is recorded; a lost lease stops the worker, and its successor re-sends from the recorded
position: a repeat, never a gap or a reordering).

The chain's signed checkpoints (:func:`api.audit.checkpoints.checkpoints_after`) travel in the same
order, each right after the entry it signs (``delivered_checkpoint_seq`` records how far they have
gone, moved with ``delivered_seq`` in one statement), so the customer holds an independent copy. A
checkpoint signed after its entry was sent goes out at the head of the next batch: later than its
position (a signature cannot precede itself), never lost, and the entries' order is untouched.
Signers of a chain take turns, so its checkpoints commit in seq order and none is skipped.

A failure leaves the stream where it was, due again after a doubling wait capped by
``KEEL_AUDIT_STREAM_RETRY_MAX_SECONDS``. The first failure of a run publishes the webhook event
``audit_stream.failing``; a stream failing for :data:`FAILURE_WINDOW` (7 days) is disabled with the
reason (an audit entry, and ``audit_stream.disabled``). A disabled stream stops holding back pruning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from api.audit import services as audit
from api.audit.checkpoints import checkpoints_after
from api.audit.models import AuditSignedCheckpoint
from api.audit.rows import SELECT_ENTRIES, as_entry, iso
from api.audit.streams.destinations import Prepared, Target, prepare, succeeded
from api.audit.streams.formats import StreamItem
from api.audit.streams.models import AuditStream, StreamStatus, StreamType
from api.audit.streams.secrets import Sealer
from api.audit.streams.services import RESOURCE, snapshot, target_of
from api.auth.context import Actor
from api.db.engine import make_async_engine, make_sessionmaker
from api.settings import Settings
from api.webhooks import ssrf
from api.webhooks.drain import drain_until_idle
from api.webhooks.lanes import Lanes
from api.webhooks.worker import origin, worker_name

log = logging.getLogger("keel.audit.streams")

FAILURE_WINDOW = timedelta(days=7)

#: A stream has something to send: entries past ``delivered_seq``, or checkpoints of entries already
#: sent that it has not sent (one signed later than the entry went out). A checkpoint past
#: ``delivered_seq`` waits for its entry, which the first condition already counts.
HAS_BACKLOG = """(
    d.delivered_seq < COALESCE(
        (SELECT h.seq FROM audit_chain_heads h WHERE h.chain_key = d.organization_id::text), 0)
    OR EXISTS (SELECT 1 FROM audit_signed_checkpoints c WHERE c.chain_key = d.organization_id::text
               AND c.seq > d.delivered_checkpoint_seq AND c.seq <= d.delivered_seq))"""

#: ``(delivered_seq, delivered_checkpoint_seq)``: how far a stream has got.
Position = tuple[int, int]


@dataclass(frozen=True, slots=True)
class StreamConfig:
    #: Streams delivered at once by one worker.
    concurrency: int = 16
    #: Entries read from the chain per round (each is one or more requests).
    batch_size: int = 500
    lease_seconds: float = 60.0
    request_timeout: float = 15.0
    #: Rounds a worker delivers to one stream before it lets the lease go (others may be due).
    rounds_per_claim: int = 20
    #: An s3 stream writes at most one object per window (seconds).
    s3_window: float = 60.0
    poll_interval: float = 1.0
    #: First retry wait; doubles per failure up to the settings' cap.
    retry_base: float = 1.0


@dataclass(slots=True)
class StreamStats:
    delivered: int = 0
    requests: int = 0
    failures: int = 0
    disabled: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Sent:
    ok: bool
    status_code: int | None
    error: str | None


async def send(lanes: Lanes, request: Prepared) -> Sent:
    """One request through the guarded transport; never raises for the destination's failures."""
    lane = lanes.lane(origin(request.url))
    lane.busy += 1
    try:
        response = await lane.transport.handle_async_request(
            httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.body,
                extensions={"timeout": lanes.timeout},
            )
        )
        try:
            body = await response.aread()
        finally:
            await response.aclose()
    except httpx.TimeoutException as exc:
        return Sent(False, None, f"timeout: {type(exc).__name__}")
    except ssrf.TargetRefused as exc:
        return Sent(False, None, f"ssrf_blocked: {exc}")
    except (httpx.HTTPError, ssrf.DnsFailure, OSError) as exc:
        return Sent(False, None, f"connection: {type(exc).__name__}: {exc}"[:500])
    finally:
        lane.busy -= 1
    if 200 <= response.status_code < 300:
        return Sent(True, response.status_code, None)
    return Sent(
        False, response.status_code, f"HTTP {response.status_code}: {body[:200].decode(errors='replace')}"
    )


def backoff(failures: int, *, base: float, cap: float) -> float:
    """Seconds before the next attempt after ``failures`` consecutive failures (1, 2, 4… up to cap)."""
    return min(cap, base * (2 ** min(max(failures - 1, 0), 30)))


class StreamWorker:
    """One worker process's stream deliveries. ``async with StreamWorker(settings) as w: await w.run()``;
    tests call :meth:`tick` or :meth:`run_until_idle`."""

    def __init__(
        self, settings: Settings, config: StreamConfig | None = None, *, name: str | None = None
    ) -> None:
        if not settings.database_url:
            raise ValueError("the stream worker needs settings.database_url")
        self.settings = settings
        self.config = config or StreamConfig()
        self.name = name or worker_name()
        self.stats = StreamStats()
        self._engine: AsyncEngine | None = None
        self._lanes: Lanes | None = None
        self._sealer = Sealer.of(settings)

    async def __aenter__(self) -> StreamWorker:
        self._engine = make_async_engine(self.settings.database_url or "", pool_size=4)
        self._sessions = make_sessionmaker(self._engine)
        # One statement, one round trip: the reads and the advance need no transaction around them.
        self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self._lanes = Lanes(
            allow_private=self.settings.webhook_allow_private_targets,
            per_origin=4,
            timeout=self.config.request_timeout,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._engine is not None:
            with contextlib.suppress(Exception):
                async with self._engine.begin() as conn:
                    await conn.execute(
                        text(
                            "UPDATE audit_streams SET leased_by = NULL, leased_until = NULL"
                            " WHERE leased_by = :w"
                        ),
                        {"w": self.name},
                    )
        if self._lanes is not None:
            await self._lanes.aclose()
        if self._engine is not None:
            await self._engine.dispose()

    # --- the queue ----------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[AuditStream]:
        """Lease up to ``limit`` due active streams that have something to send."""
        async with self._sessions() as session, session.begin():
            rows = (
                (
                    await session.execute(
                        text(f"""
UPDATE audit_streams s SET leased_by = :w, leased_until = now() + make_interval(secs => :lease)
FROM (SELECT d.id FROM audit_streams d
      WHERE d.status = 'active' AND d.next_attempt_at <= now()
        AND (d.leased_until IS NULL OR d.leased_until < now())
        AND {HAS_BACKLOG}
      ORDER BY d.next_attempt_at LIMIT :n FOR UPDATE SKIP LOCKED) due
WHERE s.id = due.id
RETURNING s.id"""),
                        {"w": self.name, "lease": self.config.lease_seconds, "n": limit},
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                return []
            streams = (await session.scalars(select(AuditStream).where(AuditStream.id.in_(rows)))).all()
            session.expunge_all()
            return list(streams)

    async def _items(self, organization_id: uuid.UUID, after: Position, limit: int) -> list[StreamItem]:
        """The next items past ``after``: the chain's entries and its signed checkpoints merged in seq
        order (a checkpoint right after the entry it signs), at most ``limit``."""
        entries = await self._entries(str(organization_id), after[0], limit)
        # Checkpoints of what has been sent or is in this batch; a later one waits for its entry.
        through = entries[-1].seq if entries else after[0]
        if through <= after[1]:
            return entries
        async with self._sessions() as session:
            signed = await checkpoints_after(
                session, organization_id=organization_id, after_seq=after[1], through_seq=through, limit=limit
            )
        if not signed:
            return entries
        merged = sorted([*entries, *map(checkpoint_item, signed)], key=order)
        return merged[:limit]

    async def _entries(self, chain_key: str, after: int, limit: int) -> list[StreamItem]:
        """The next entries of the chain, in seq order."""
        assert self._engine is not None
        async with self._autocommit.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            async with driver.cursor() as cursor:
                await cursor.execute(
                    f"{SELECT_ENTRIES} WHERE chain_key = %(k)s AND seq > %(after)s ORDER BY seq LIMIT %(n)s",
                    {"k": chain_key, "after": after, "n": limit},
                )
                rows = await cursor.fetchall()
        items = []
        for row in rows:
            entry = as_entry(row)
            entry["recorded_at"] = iso(entry["recorded_at"])
            items.append(StreamItem("entry", entry["seq"], entry))
        return items

    async def _advance(self, stream: AuditStream, through: Position) -> bool:
        """Record delivery through ``through``; False when the lease was lost (another worker has it)."""
        again = self.config.s3_window if stream.type is StreamType.s3 else 0.0
        async with self._autocommit.connect() as conn:
            moved = await conn.scalar(
                text("""
UPDATE audit_streams SET delivered_seq = :through, delivered_checkpoint_seq = :through_checkpoint,
       last_success_at = now(), failures = 0, failing_since = NULL,
       next_attempt_at = now() + make_interval(secs => :again), updated_at = now()
WHERE id = :id AND leased_by = :w AND delivered_seq = :prev
  AND delivered_checkpoint_seq = :prev_checkpoint AND leased_until > now()
RETURNING id"""),
                {
                    "through": through[0],
                    "through_checkpoint": through[1],
                    "again": again,
                    "id": stream.id,
                    "w": self.name,
                    "prev": stream.delivered_seq,
                    "prev_checkpoint": stream.delivered_checkpoint_seq,
                },
            )
        if moved is not None:
            stream.delivered_seq, stream.delivered_checkpoint_seq = through
            stream.failures, stream.failing_since = 0, None
        return moved is not None

    async def _failed(self, stream: AuditStream, error: str) -> None:
        """Back off; publish ``audit_stream.failing`` on a run's first failure; disable past the window."""
        failures = stream.failures + 1
        wait = backoff(
            failures, base=self.config.retry_base, cap=self.settings.audit_stream_retry_max_seconds
        )
        self.stats.failures += 1
        self.stats.errors.append(error)
        async with self._sessions() as session, session.begin():
            row = (
                await session.execute(
                    text("""
UPDATE audit_streams SET failures = :failures, failing_since = COALESCE(failing_since, now()),
       last_error = :error, last_error_at = now(), next_attempt_at = now() + make_interval(secs => :wait),
       leased_by = NULL, leased_until = NULL, updated_at = now()
WHERE id = :id AND leased_by = :w
RETURNING failing_since, now() AS now"""),
                    {
                        "failures": failures,
                        "error": error[:1000],
                        "wait": wait,
                        "id": stream.id,
                        "w": self.name,
                    },
                )
            ).one_or_none()
            if row is None:
                return
            failing_since, now = row
            payload = {
                "stream_id": str(stream.id),
                "name": stream.name,
                "type": stream.type.value,
                "error": error[:500],
                "failing_since": iso(failing_since),
                "delivered_seq": stream.delivered_seq,
            }
            if now - failing_since >= FAILURE_WINDOW:
                await self._disable(session, stream, failing_since, error, payload)
            elif stream.failures == 0:
                await _publish(
                    session, stream.organization_id, event_type="audit_stream.failing", payload=payload
                )

    async def _disable(
        self, session: AsyncSession, stream: AuditStream, since: datetime, error: str, payload: dict[str, Any]
    ) -> None:
        reason = f"failing since {iso(since)}: {error}"[:1000]
        before = snapshot(stream)
        await session.execute(
            text("""UPDATE audit_streams SET status = 'disabled', disabled_reason = :reason,
                    disabled_at = now() WHERE id = :id"""),
            {"reason": reason, "id": stream.id},
        )
        stream.status = StreamStatus.disabled
        await audit.record(
            session,
            action="audit_stream.disabled",
            actor=Actor.system("audit-streams"),
            ctx=None,
            organization_id=stream.organization_id,
            resource_type=RESOURCE,
            resource_id=stream.id,
            before=before,
            after=snapshot(stream),
            metadata={"reason": reason},
        )
        await _publish(
            session,
            stream.organization_id,
            event_type="audit_stream.disabled",
            payload={**payload, "reason": reason},
        )
        self.stats.disabled += 1

    async def _release(self, stream: AuditStream) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                text(
                    "UPDATE audit_streams SET leased_by = NULL, leased_until = NULL"
                    " WHERE id = :id AND leased_by = :w"
                ),
                {"id": stream.id, "w": self.name},
            )

    async def deliver(self, stream: AuditStream) -> int:
        """Send the stream's backlog in order, a batch at a time, while the lease lasts.

        Returns the items sent (entries and checkpoints)."""
        assert self._lanes is not None
        try:
            target: Target = target_of(stream, self._sealer)
        except ValueError as exc:  # a key that no longer opens its credential
            await self._failed(stream, f"credential: {exc}")
            return 0
        sent, rounds, size = 0, 1, self.config.batch_size
        org = stream.organization_id
        deadline = time.monotonic() + self.config.lease_seconds - self.config.request_timeout - 5
        # Where ``items`` starts (what was sent before it, recorded or being recorded).
        at: Position = (stream.delivered_seq, stream.delivered_checkpoint_seq)
        items = await self._items(org, at, size)
        recording: asyncio.Task[int] | None = None
        while items:
            if time.monotonic() > deadline:
                break  # (what is being recorded is awaited below)
            request = prepare(target, items)
            rest = items[request.count :]
            # The next batch is read while this one is in flight (an s3 stream writes one object
            # per window, so it waits for its next turn instead).
            ahead = None
            if (
                not rest
                and len(items) == size
                and rounds < self.config.rounds_per_claim
                and stream.type is not StreamType.s3
            ):
                ahead = asyncio.create_task(self._items(org, past(items, at), size))
            outcome = await send(self._lanes, request)
            self.stats.requests += 1
            # The previous batch's acknowledgement was recorded while this one flew; it must have
            # held (the lease is still ours) before anything else is recorded.
            if recording is not None:
                recorded, recording = await recording, None
                if not recorded:
                    await _cancel(ahead)
                    return sent  # the lease was lost: whoever holds it carries on
                sent += recorded
            if not (
                outcome.ok and outcome.status_code is not None and succeeded(target, outcome.status_code)
            ):
                await _cancel(ahead)
                await self._failed(stream, outcome.error or f"HTTP {outcome.status_code}")
                return sent
            at = past(items[: request.count], at)
            recording = asyncio.create_task(self._acknowledge(stream, at, request.count))
            if rest:
                items = rest
            elif ahead is not None:
                items, rounds = await ahead, rounds + 1
            else:
                break
        if recording is not None:
            recorded = await recording
            if not recorded:
                return sent
            sent += recorded
        await self._release(stream)
        return sent

    async def _acknowledge(self, stream: AuditStream, through: Position, count: int) -> int:
        """``count`` when delivery through ``through`` is recorded, 0 when the lease was lost."""
        if not await self._advance(stream, through):
            return 0
        self.stats.delivered += count
        return count

    async def tick(self) -> int:
        """One claim, each claimed stream delivered; returns the entries sent."""
        streams = await self.claim(self.config.concurrency)
        if not streams:
            return 0
        done = await asyncio.gather(*(self.deliver(s) for s in streams))
        return sum(done) or len(streams)

    async def seconds_until_due(self, organization_id: uuid.UUID | None = None) -> float | None:
        async with self._sessions() as session:
            value = await session.scalar(
                text(f"""
SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now()) FROM audit_streams d
WHERE d.status = 'active' AND (CAST(:org AS uuid) IS NULL OR d.organization_id = CAST(:org AS uuid))
  AND {HAS_BACKLOG}"""),
                {"org": str(organization_id) if organization_id else None},
            )
        return None if value is None else max(0.0, float(value))

    async def run_until_idle(
        self,
        *,
        max_seconds: float = 60.0,
        horizon: float = 30.0,
        organization_id: uuid.UUID | None = None,
        done: Callable[[], bool] | None = None,
    ) -> StreamStats:
        """Deliver until nothing is due within ``horizon`` s (or ``done()``); for tests and the bench
        (:func:`api.webhooks.drain.drain_until_idle`)."""
        await drain_until_idle(
            self, max_seconds=max_seconds, done=done, horizon=horizon, organization_id=organization_id,
            poll=0.1, name="the stream worker",
        )  # fmt: skip
        return self.stats

    async def run(self, stop: asyncio.Event) -> StreamStats:
        """Deliver until ``stop`` is set (the streams in flight finish their round first)."""
        while not stop.is_set():
            try:
                busy = await self.tick()
            except Exception:
                log.exception("delivering audit streams failed; retrying shortly")
                busy = 0
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.poll_interval)
        return self.stats


def checkpoint_item(checkpoint: AuditSignedCheckpoint) -> StreamItem:
    """A signed checkpoint as a stream carries it: its JWS whole, beside what it signs."""
    return StreamItem(
        "checkpoint",
        checkpoint.seq,
        {
            "chain": checkpoint.chain_key,
            "seq": checkpoint.seq,
            "hash": checkpoint.hash,
            "signed_at": iso(checkpoint.signed_at),
            "jws": checkpoint.jws,
        },
    )


def order(item: StreamItem) -> tuple[int, int]:
    """Stream order: by seq, a checkpoint after the entry it signs."""
    return item.seq, item.kind == "checkpoint"


def past(items: list[StreamItem], at: Position) -> Position:
    """The position after ``items`` (sent from ``at``)."""
    entry, checkpoint = at
    for item in items:
        if item.kind == "checkpoint":
            checkpoint = max(checkpoint, item.seq)
        else:
            entry = max(entry, item.seq)
    return entry, checkpoint


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _publish(
    session: AsyncSession, organization_id: uuid.UUID, *, event_type: str, payload: dict[str, Any]
) -> None:
    from api.webhooks.messages import publish

    await publish(session, organization_id=organization_id, event_type=event_type, payload=payload)


async def test_stream(settings: Settings, stream: AuditStream) -> Sent:
    """``POST …/test``: one ``test`` item to the destination now, outside the stream's order and state."""
    target = target_of(stream, Sealer.of(settings))
    item = StreamItem(
        "test",
        0,
        {
            "stream_id": str(stream.id),
            "occurred_at": datetime.now(UTC).isoformat(),
            "message": "Keel audit stream test",
        },
    )
    lanes = Lanes(allow_private=settings.webhook_allow_private_targets, per_origin=1, timeout=15.0)
    try:
        return await send(lanes, prepare(target, [item]))
    finally:
        await lanes.aclose()
