"""The delivery queue in Postgres: claiming due deliveries under a lease, reclaiming the leases of
dead workers, and recording a batch of outcomes in one transaction.

Claims take due rows with ``FOR UPDATE SKIP LOCKED`` (so any number of workers share the queue)
through the partial index of due rows, and mark them ``delivering`` until ``leased_until``. A
worker that dies leaves its lease to expire; whichever worker looks first records the lost
attempt (``worker_lost``) and makes the delivery due again: at least once, never never.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg

from api.auth.context import Actor
from api.db.base import new_id
from api.db.engine import libpq_url, make_async_engine, make_sessionmaker
from api.webhooks.endpoints import disable_endpoint
from api.webhooks.models import DeliveryStatus, WebhookEndpoint
from api.webhooks.sender import Job, Outcome

log = logging.getLogger("keel.webhooks.worker")

#: Continuous failure for this long disables an endpoint.
FAILURE_WINDOW = timedelta(days=5)
#: A Retry-After is honoured up to a day.
MAX_RETRY_AFTER = 86_400.0
JITTER = 0.10

#: Oldest due first, but at most ``per_endpoint`` of an endpoint the worker holds nothing of, and
#: of one it holds some of no more than its ``room`` (what keeps the worker's hold of it within
#: three times its request slots), among the oldest ``scan`` due rows; none of the endpoints the
#: worker already holds its share of: one customer's backlog never stands in front of everyone
#: else's deliveries. The body and the webhook id come out as sent, in binary: the body is Standard
#: Webhooks' envelope ``{"type", "timestamp", "data"}`` (``type`` as ``json.dumps`` writes an event
#: type, ``timestamp`` the message's creation as ``datetime.isoformat`` writes it in UTC, ``data``
#: the payload as stored), so nothing of a claimed row is parsed or formatted in the worker.
CLAIM = """
WITH candidates AS (
    SELECT id, endpoint_id, next_attempt_at FROM webhook_deliveries
    WHERE status IN ('pending', 'failed') AND next_attempt_at IS NOT NULL AND next_attempt_at <= now()
      AND NOT (endpoint_id = ANY(%(saturated)s::uuid[]))
    ORDER BY next_attempt_at
    LIMIT %(scan)s
), ranked AS (
    SELECT c.id, coalesce(h.room, %(per_endpoint)s) AS room,
           row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at) AS place
    FROM candidates c
    LEFT JOIN unnest(%(held)s::uuid[], %(room)s::int[]) AS h(endpoint_id, room)
           ON h.endpoint_id = c.endpoint_id
), due AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.id = ANY (ARRAY(SELECT id FROM ranked WHERE place <= room))
      AND d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
    ORDER BY d.next_attempt_at
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
          'msg_' || replace(m.id::text, '-', ''),
          convert_to('{"type":' || to_json(m.event_type::text)::text || ',"timestamp":"'
                     || to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                     || CASE WHEN extract(microseconds FROM m.created_at)::int %% 1000000 = 0 THEN ''
                             ELSE to_char(m.created_at AT TIME ZONE 'UTC', '.US') END
                     || '+00:00","data":' || m.payload::text || '}', 'UTF8')
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

#: A round's outcomes in one statement (one round trip, one commit): the deliveries' new states, an
#: attempt row per outcome, and the endpoints' ``failing_since``; it returns the endpoints that have
#: failed for the whole window. A delivery whose lease this worker lost keeps its state (another
#: worker holds it now) but its attempt is still a row: it happened. Parameters go in binary: psycopg
#: dumps a list as text at ~45 us a row, in binary at ~7 (the worker's largest cost after sending).
RECORD = """
WITH outcome AS (
    SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::uuid[], %b::uuid[], %b::int[], %b::timestamptz[],
                         %b::int[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                         %b::timestamptz[], %b::text[])
        AS u(id, org, endpoint, delivery, n, started_at, duration, code, headers, body, error_class,
             error_detail, status, next_at, error)
), completed AS (
    UPDATE webhook_deliveries d
    SET status = u.status, attempts = u.n, next_attempt_at = u.next_at, last_attempt_at = u.started_at,
        last_status_code = u.code, last_error = u.error,
        succeeded_at = CASE WHEN u.status = 'succeeded' THEN u.started_at + u.duration * interval '1 ms' END,
        leased_until = NULL, leased_by = NULL, updated_at = now()
    FROM outcome u
    WHERE d.id = u.delivery AND d.status = 'delivering' AND d.leased_by = %b::text
), attempted AS (
    INSERT INTO webhook_attempts (id, organization_id, endpoint_id, delivery_id, attempt_number, started_at,
                                  duration_ms, status_code, response_headers, response_body, error_class,
                                  error_detail)
    SELECT u.id, u.org, u.endpoint, u.delivery, u.n, u.started_at, u.duration, u.code, u.headers::jsonb,
           u.body, u.error_class, u.error_detail
    FROM outcome u
), endpoint AS (
    UPDATE webhook_endpoints e
    SET failing_since = CASE WHEN f.since IS NULL THEN NULL WHEN f.recovered THEN f.since
                             ELSE coalesce(e.failing_since, f.since) END
    FROM unnest(%b::uuid[], %b::timestamptz[], %b::bool[]) AS f(id, since, recovered)
    WHERE e.id = f.id AND (f.since IS NOT NULL OR e.failing_since IS NOT NULL)
    RETURNING e.id, f.since IS NOT NULL AND e.enabled
                    AND e.failing_since < now() - make_interval(secs => %b::float8) AS overdue
)
SELECT id FROM endpoint WHERE overdue
"""

#: The attempts a reap records for the deliveries it takes back from dead workers.
RECORD_ATTEMPTS = """
INSERT INTO webhook_attempts (id, organization_id, endpoint_id, delivery_id, attempt_number, started_at,
                              duration_ms, status_code, response_headers, response_body, error_class,
                              error_detail)
SELECT u.id, u.org, u.endpoint, u.delivery, u.n, u.started_at, u.duration, u.code, u.headers::jsonb,
       u.body, u.error_class, u.error_detail
FROM unnest(%b::uuid[], %b::uuid[], %b::uuid[], %b::uuid[], %b::int[], %b::timestamptz[], %b::int[],
            %b::int[], %b::text[], %b::text[], %b::text[], %b::text[])
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


@dataclass
class WorkerStats:
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    reaped: int = 0
    disabled: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


class DeliveryQueue:
    """One worker's two connections to the queue: one claims (autocommit), one records."""

    def __init__(
        self,
        database_url: str,
        *,
        worker: str,
        schedule: tuple[int, ...],
        lease_seconds: float,
        per_endpoint: int,
        reap_interval: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.name = worker
        self.schedule = schedule
        self.lease_seconds = lease_seconds
        self.per_endpoint = per_endpoint
        #: The most a worker holds of one endpoint: three rounds of its request slots, so that what
        #: waits its turn behind a slow endpoint (15 s a request at worst) is sent well within its
        #: lease (60 s).
        self.hold = 3 * per_endpoint
        #: What it holds of one before leaving it out of claims: its requests in flight and half as
        #: many waiting, so its next turns wait claimed while a claim runs. A claim then tops it up to
        #: :attr:`hold` (about ``1.5 x per_endpoint`` a claim, not ``per_endpoint``: a third fewer
        #: claims for a backlog), and takes at most ``per_endpoint`` of one it holds nothing of.
        #: (Taking 2 x per_endpoint whatever was held let an endpoint hold up to four rounds, and one
        #: slow backlog then filled a small worker: tests/test_webhook_delivery.py's slow backlog.)
        self.share = per_endpoint + max(1, per_endpoint // 2)
        self.reap_interval = reap_interval
        self.stats = WorkerStats()
        self._last_reap = 0.0
        self._claim_conn: psycopg.AsyncConnection[Any] | None = None
        self._write_conn: psycopg.AsyncConnection[Any] | None = None
        self._engine = make_async_engine(database_url, pool_size=2)
        self._sessions = make_sessionmaker(self._engine)

    async def open(self) -> None:
        url = libpq_url(self.database_url)
        self._claim_conn = await self._connect_claim()
        # Autocommit: a round's record is one statement, so it is its own transaction.
        self._write_conn = await psycopg.AsyncConnection.connect(url, autocommit=True)

    async def _connect_claim(self) -> psycopg.AsyncConnection[Any]:
        """The claim's connection: autocommit, and it does not wait for its commits to reach the
        disk. All it writes is leases and what a lost lease leads to (a reap, a park, a release):
        one of them lost in a crash of the server leaves its rows as they were before it (due, or
        leased to a worker that is gone), which the next claim or reap takes again, at least once
        as ever; a round's record, on the other connection, waits for the disk, and with it for
        every lease committed before it."""
        conn = await psycopg.AsyncConnection.connect(libpq_url(self.database_url), autocommit=True)
        await conn.execute("SET synchronous_commit = off")
        return conn

    async def close(self) -> None:
        for conn in (self._claim_conn, self._write_conn):
            if conn is not None:
                await conn.close()
        await self._engine.dispose()

    async def claim(
        self, limit: int, saturated: list[uuid.UUID] | None = None, held: dict[uuid.UUID, int] | None = None
    ) -> list[Job]:
        """Lease up to ``limit`` due deliveries (none of a saturated endpoint, and of an endpoint
        ``held`` counts no more than its room under :attr:`hold`); those of a disabled endpoint are
        parked instead."""
        assert self._claim_conn is not None
        await self._maybe_reap()
        held = held or {}
        cursor = await self._claim_conn.execute(
            CLAIM,
            {
                "limit": limit,
                "scan": limit * 4,
                "per_endpoint": self.per_endpoint,
                "held": list(held),
                "room": [max(0, self.hold - n) for n in held.values()],
                "lease": self.lease_seconds,
                "worker": self.name,
                "saturated": saturated or [],
            },
            binary=True,
        )
        jobs, parked = [], []
        for (delivery_id, org_id, endpoint_id, attempts, url, live, secret, previous, webhook_id,
             body) in await cursor.fetchall():  # fmt: skip
            if not live:
                parked.append(delivery_id)
                continue
            jobs.append(
                Job(
                    delivery_id, org_id, endpoint_id, attempts + 1, url,
                    [secret, previous] if previous else [secret], webhook_id, body,
                )
            )  # fmt: skip
        if parked:
            await self._claim_conn.execute(PARK, (parked, self.name))
        return jobs

    async def _maybe_reap(self) -> None:
        if time.monotonic() - self._last_reap < self.reap_interval:
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

    async def release(self) -> int:
        """On shutdown: whatever this worker still holds becomes due again at once."""
        if self._claim_conn is None or self._claim_conn.closed:
            return 0
        cursor = await self._claim_conn.execute(RELEASE, (self.name,))
        return cursor.rowcount

    def next_delay(self, outcome: Outcome) -> float | None:
        """Seconds until the next attempt, or None when the delivery is out of attempts."""
        made = outcome.job.attempt_number
        if made >= len(self.schedule):
            return None
        delay = self.schedule[made] * random.uniform(1 - JITTER, 1 + JITTER)
        if outcome.retry_after is not None and outcome.status_code in (429, 503):
            delay = max(delay, min(outcome.retry_after, MAX_RETRY_AFTER))
        return delay

    async def record(self, outcomes: list[Outcome]) -> None:
        """Write a round of outcomes and their attempts in one statement (:data:`RECORD`); then disable
        endpoints that answered 410 or have failed for five days."""
        assert self._write_conn is not None
        now = datetime.now(UTC)
        succeeded, failed, exhausted = (
            DeliveryStatus.succeeded.value, DeliveryStatus.failed.value, DeliveryStatus.exhausted.value
        )  # fmt: skip
        encode = msgspec.json.encode
        # One pass, one list per column (the statement's arrays), as a round is the worker's only
        # per-delivery work besides sending; its counts go to the stats once.
        ids, orgs, endpoints, deliveries, numbers, started, durations, codes = [], [], [], [], [], [], [], []
        headers, bodies, error_classes, details, statuses = [], [], [], [], []
        next_at: list[datetime | None] = []
        errors: list[str | None] = []
        gone: dict[uuid.UUID, str] = {}
        # Per endpoint: since when it has failed without a success after (None: its last outcome
        # here succeeded), and whether it succeeded at all here (then an older failing_since is over).
        since: dict[uuid.UUID, datetime | None] = {}
        recovered: set[uuid.UUID] = set()
        by_error: dict[str, int] = {}
        ok = 0
        for o in sorted(outcomes, key=lambda o: o.started_at):
            job = o.job
            endpoint_id = job.endpoint_id
            ids.append(new_id())
            orgs.append(job.organization_id)
            endpoints.append(endpoint_id)
            deliveries.append(job.delivery_id)
            numbers.append(job.attempt_number)
            started.append(o.started_at)
            durations.append(o.duration_ms)
            codes.append(o.status_code)
            headers.append(encode(o.headers).decode() if o.headers is not None else None)
            bodies.append(o.body)
            error_classes.append(o.error_class)
            details.append(o.error_detail)
            if o.succeeded:
                ok += 1
                statuses.append(succeeded)
                next_at.append(None)
                errors.append(None)
                since[endpoint_id] = None
                recovered.add(endpoint_id)
                continue
            key = o.error_class or f"http_{o.status_code}"
            by_error[key] = by_error.get(key, 0) + 1
            if since.get(endpoint_id) is None:
                since[endpoint_id] = o.started_at
            errors.append(o.summary)
            delay = self.next_delay(o)
            if o.status_code == 410:
                gone[endpoint_id] = "the endpoint answered 410 Gone"
                statuses.append(failed)
                next_at.append(None)
            elif delay is None:
                statuses.append(exhausted)
                next_at.append(None)
            else:
                statuses.append(failed)
                next_at.append(now + timedelta(seconds=delay))
        columns = (ids, orgs, endpoints, deliveries, numbers, started, durations, codes, headers, bodies,
                   error_classes, details)  # fmt: skip
        cursor = await self._write_conn.execute(
            RECORD,
            (*columns, statuses, next_at, errors, self.name, list(since), list(since.values()),
             [e in recovered for e in since], FAILURE_WINDOW.total_seconds()),
        )  # fmt: skip
        overdue = [endpoint_id for (endpoint_id,) in await cursor.fetchall()]
        self.stats.attempts += len(outcomes)
        self.stats.succeeded += ok
        self.stats.failed += len(outcomes) - ok
        for key, n in by_error.items():
            self.stats.by_error[key] = self.stats.by_error.get(key, 0) + n
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
        async with self._sessions() as session, session.begin():
            endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
            if endpoint is None or not endpoint.enabled or endpoint.deleted_at is not None:
                return
            await disable_endpoint(
                session, endpoint, reason=reason, actor=Actor.system("webhook-worker"), ctx=None
            )
        self.stats.disabled += 1
        log.warning("disabled webhook endpoint %s: %s", endpoint_id, reason)

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

    async def reconnect_claim(self) -> None:
        await asyncio.sleep(1)
        with contextlib.suppress(Exception):
            if self._claim_conn is not None:
                await self._claim_conn.close()
        with contextlib.suppress(psycopg.Error):
            self._claim_conn = await self._connect_claim()

    async def reconnect_write(self) -> None:
        with contextlib.suppress(Exception):
            if self._write_conn is not None:
                await self._write_conn.close()
        with contextlib.suppress(psycopg.Error):
            self._write_conn = await psycopg.AsyncConnection.connect(
                libpq_url(self.database_url), autocommit=True
            )
