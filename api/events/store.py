"""Writing events: one statement dedupes and inserts the new rows.

A key is held by its event: each day partition of ``events`` has a unique index on
(organization_id, message_id) of its own (migration 0080), and the insert's ``ON CONFLICT DO
NOTHING`` takes the routed partition's unique index as its arbiter, so the same day's dedupe
costs the event's index entry and nothing else (until 0080 every key was a row of ``event_keys``
too: a second heap tuple, index entry and speculative-insert confirmation per event, two thirds
of the statement). The index a claim writes holds one day however many the retention keeps (one
global index of random message ids outgrew memory: every claim read and dirtied a random page,
and wrote it whole into the WAL after each checkpoint). The dedupe window
(``KEEL_EVENTS_DEDUPE_DAYS``, N, default 1) is exact:

- the same UTC day: the day partition's unique index, concurrent claims of one key included (the
  second waits for the first's commit);
- the N days before: the statement reads their partitions (one index scan a partition for all
  its keys: ``seen``);
  a replay up to N times 24 h after the first copy is always found (one up to N + 1 days, often);
- the day boundary, where a read would miss a claim not yet committed on the other day: a key
  received (or claimed) within :data:`BOUNDARY` of the end of its day is claimed in
  ``event_keys`` on the next day's partition, and a key received (or claimed) within
  :data:`BOUNDARY` of the start of its day on that day's, in the same statement, so two claims
  racing across midnight meet on one primary key (``event_keys_pYYYYMMDD``, made and dropped with
  the day's events partition); a row counts as new only if every claim it made was new. This
  holds as long as a claim's statement runs and commits within half an hour of its
  ``received_at`` (which the API stamps just before: its clock within that of Postgres's). A
  claim found late after its day ended also reads the next day's partition, so a replay stored
  there and committed is found whenever it arrived.

A replay older than the window is stored again (the lake keeps both; docs/api.md).

The rows travel as one JSONB array parameter: msgspec encodes it in C, Postgres parses it once
(properties and context arrive as JSONB values, parsed with the rest). Earlier designs cost the
API process more than Postgres: a ``RETURNING`` of every claimed key (UUIDs built and hashed in
Python), then a binary ``COPY`` row by row.

Two ways in:

- :class:`SessionWriter`: the statement joins a session's transaction (the demo seed, flag
  exposures recorded beside other writes).
- :class:`EventWriter`: the API's own autocommit connections, where the statement is its own
  transaction and returns only after the commit. A large batch gets a statement of its own. Small
  requests (single events, mostly) arriving while a statement is in flight wait for the next one
  and share it, each still answered only after that statement's commit: one round trip, one
  commit and one WAL flush for many requests, instead of one each, which is what a 2-core machine
  could not afford at hundreds of single events a second. A shared statement that fails is
  retried request by request, so one request's bad row never fails another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypeVar

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession

from api.orgs.models import OrgStatus
from api.settings import DEFAULT_DEDUPE_DAYS
from warehouse import rules

log = logging.getLogger("keel.events")
PARTITION_DAYS_AHEAD = 7
#: Requests with at most this many new rows share statements; larger ones get their own.
SHARED_MAX_ROWS = 32
#: Rows in one shared statement at most (events are at most 32 KB each).
GROUP_MAX_ROWS = 512
#: Statements of shared requests in flight at once (each on its own connection). One: what arrives
#: while it runs (and commits) joins the next, so a statement carries more requests and Postgres
#: spends less a request. Two writers split the same arrivals into twice the statements: at
#: 2,000 single events/s each carried 2.3-3.6 requests, and one writer rated higher in each of seven
#: pairs of bench_request_path's single-event search (its docstring).
SHARED_WRITERS = 1

PgConnection = psycopg.AsyncConnection[Any]
EventKey = tuple[uuid.UUID, str]
R = TypeVar("R")


class EventRow(msgspec.Struct, array_like=True, gc=False):
    """One valid event, in column order; properties and context are JSON already (checked)."""

    organization_id: uuid.UUID
    message_id: str
    event: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    sent_at: datetime | None
    received_at: datetime
    properties: msgspec.Raw
    context: msgspec.Raw


_encode_rows = msgspec.json.Encoder().encode

#: A key received (or claimed) this close to the end of its UTC day, or this close to its start,
#: is claimed in ``event_keys`` too (module docstring: the day boundary).
BOUNDARY = timedelta(hours=1)

#: The key's 64-bit hash, as the hash index of a closed day's partition holds it (migration 0090's
#: KEY_HASH, over the same columns; tests/test_events_window_probe.py compares the two).
KEY_HASH = "hashtextextended({alias}.message_id, uuid_hash_extended({alias}.organization_id, 0))"

#: The dedupe window's read of one range of day partitions for a set of keys: the rows of
#: ``events`` received in [``%(lo)s``, ``%(hi)s``) whose (organization_id, message_id) is one of
#: the keys of ``{keys}`` (rows of organization_id, message_id) that ``{which}`` selects. One
#: statement-wide array a column, so each partition is read by one index scan for all the keys:
#:
#: - a closed day's partition (migration 0090: built an hour after its midnight by the partition
#:   upkeep) through its hash index of :data:`KEY_HASH`: a bitmap index scan, one bucket page a key
#:   and integer comparisons (the planner takes it: the hash condition is the most selective);
#: - any other (today's, tomorrow's, or yesterday's in its first hour) through its unique btree on
#:   (organization_id, message_id), the hash condition a filter.
#:
#: Exact either way: a row the hash finds is kept only if its organization_id and message_id are
#: among the keys' (the recheck of the bitmap scan, then the filter), and the caller matches the
#: rows found to its keys pair by pair (a hashed ``NOT IN``), so neither a hash collision nor the
#: cross product of the two columns' arrays makes a new key a duplicate. The bulk paths (this
#: module's statement, the COPY path) share this one fragment: ``.format(keys=, which=, lo=, hi=)``
#: with the names of the relation, its condition and the two timestamp parameters.
WINDOW_PROBE = (
    """    SELECT k.organization_id, k.message_id FROM events k
    WHERE """
    + KEY_HASH.format(alias="k")
    + """ = ANY(
            ARRAY(SELECT """
    + KEY_HASH.format(alias="w")
    + """ FROM {keys} w WHERE {which})
          )
      AND k.organization_id = ANY(ARRAY(SELECT DISTINCT w.organization_id FROM {keys} w WHERE {which}))
      AND k.message_id = ANY(ARRAY(SELECT w.message_id FROM {keys} w WHERE {which}))
      AND k.received_at >= %({lo})s AND k.received_at < %({hi})s"""
)

# ``ingest_seq`` is left to its default, which draws it under the export fence (api/db/fence.py);
# a row the insert skips (``ON CONFLICT``) has drawn a number that no row carries, as a rolled-back
# insert has: the fence's guarantee is about the numbers rows carry, not about gaps.
# ``seen``: the window's earlier days are read in one index scan per day partition for all the
# statement's keys (WINDOW_PROBE); a probe per row (``NOT EXISTS`` per key) cost about what the
# claim's insert does. The keys claimed on the next day are also looked for there (a request
# claimed late, after a replay stored).
_SEEN = (
    WINDOW_PROBE.format(keys="incoming", which="true", lo="window_from", hi="window_to")
    + "\n    UNION ALL\n"
    + WINDOW_PROBE.format(keys="incoming", which="w.next_day IS NOT NULL", lo="next_from", hi="next_to")
)
_CLAIM = f"""
WITH incoming AS MATERIALIZED (
    SELECT (e->>0)::uuid AS organization_id, e->>1 AS message_id, e->>2 AS event, e->>3 AS user_id,
           e->>4 AS anonymous_id, (e->>5)::timestamptz AS ts, (e->>6)::timestamptz AS sent_at,
           r AS received_at, e->8 AS properties, e->9 AS context, n,
           CASE WHEN %(window)s
                     AND greatest(r, statement_timestamp()) >= day + interval '24 hours' - %(boundary)s
                THEN day + interval '24 hours' END AS next_day,
           CASE WHEN %(window)s AND least(r, statement_timestamp()) < day + %(boundary)s
                THEN day END AS this_day
    FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS t(e, n),
         LATERAL (SELECT (e->>7)::timestamptz AS r) AS received,
         LATERAL (SELECT date_bin(interval '24 hours', r, timestamptz '2000-01-01 00:00:00+00') AS day) AS utc
),
seen AS MATERIALIZED (
{_SEEN}
),
near AS (
    SELECT organization_id, message_id, this_day AS day FROM incoming WHERE this_day IS NOT NULL
    UNION ALL
    SELECT organization_id, message_id, next_day FROM incoming WHERE next_day IS NOT NULL
),
claimed AS (
    INSERT INTO event_keys (organization_id, message_id, received_at)
    SELECT organization_id, message_id, day FROM near
    ON CONFLICT DO NOTHING
    RETURNING organization_id, message_id
),
taken AS (
    SELECT organization_id, message_id FROM near
    EXCEPT ALL SELECT organization_id, message_id FROM claimed
),
-- Keys not to store: found in the window, or claimed near the day boundary by another statement.
-- (A hashed NOT IN: the rows keep their order, and neither side is ever NULL.)
known AS (
    SELECT organization_id, message_id FROM seen
    UNION ALL
    SELECT organization_id, message_id FROM taken
)"""
# The same day's dedupe is the events partition's own unique index (migration 0080): with no
# conflict target, ON CONFLICT DO NOTHING takes the routed partition's unique indexes as arbiters.
_INSERT = """
INSERT INTO events (organization_id, message_id, event, user_id, anonymous_id, timestamp, sent_at,
                    received_at, properties, context)
SELECT i.organization_id, i.message_id, i.event, i.user_id, i.anonymous_id, i.ts, i.sent_at,
       i.received_at, i.properties, i.context
FROM incoming i
WHERE (i.organization_id, i.message_id) NOT IN (SELECT organization_id, message_id FROM known)
ORDER BY i.n
ON CONFLICT DO NOTHING"""
#: Only the count comes back (a batch's own statement).
INSERT_EVENTS = _CLAIM + _INSERT
#: The ordinals (from 1) of the rows stored (a shared statement answers each request apart).
INSERT_EVENTS_RETURNING = (
    _CLAIM
    + ",\nstored AS ("
    + _INSERT
    + "\n    RETURNING organization_id, message_id\n)\nSELECT i.n FROM incoming i JOIN stored s"
    + " ON s.organization_id = i.organization_id AND s.message_id = i.message_id"
)


def _midnight(moment: datetime) -> datetime:
    day = moment.astimezone(UTC)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _days(rows: list[EventRow]) -> set[datetime]:
    """The UTC midnights the rows were received on (a request's rows share one ``received_at``:
    the distinct values first, so a batch costs one conversion, not one a row)."""
    return {_midnight(moment) for moment in {row.received_at for row in rows}}


def _params(rows: list[EventRow], dedupe_days: int) -> dict[str, Any]:
    days = _days(rows)
    return {
        "rows": _encode_rows(rows).decode(),
        "window": dedupe_days > 0,
        "window_from": min(days) - timedelta(days=dedupe_days),
        "window_to": max(days),
        "next_from": min(days) + timedelta(days=1),
        "next_to": max(days) + timedelta(days=2),
        "boundary": BOUNDARY,
    }


async def store(conn: PgConnection, rows: list[EventRow], dedupe_days: int) -> int:
    """Store the rows whose (organization, message_id) is new in the dedupe window of
    ``dedupe_days``; returns how many were stored.

    ``rows`` must not repeat a key (the caller keeps the first of each)."""
    async with conn.cursor() as cur:
        await cur.execute(INSERT_EVENTS, _params(rows, dedupe_days))
        return cur.rowcount


async def store_returning(conn: PgConnection, rows: list[EventRow], dedupe_days: int) -> set[int]:
    """Like :func:`store`; returns the positions (from 0) of the rows stored."""
    async with conn.cursor() as cur:
        await cur.execute(INSERT_EVENTS_RETURNING, _params(rows, dedupe_days))
        return {n - 1 for (n,) in await cur.fetchall()}


#: The live organizations among some ids (warehouse.rules.ORG_IS_LIVE), with their status.
LIVE_ORGS = (
    f"SELECT id, status FROM organizations WHERE id = ANY(%s) AND {rules.ORG_IS_LIVE.sql('deleted_at')}"
)


async def live_orgs(conn: PgConnection, org_ids: set[uuid.UUID]) -> dict[uuid.UUID, OrgStatus]:
    cursor = await conn.execute(LIVE_ORGS, (list(org_ids),))
    return {org_id: OrgStatus(status) for org_id, status in await cursor.fetchall()}


class PartitionKeeper:
    """Knows which day partitions exist, so the ingest path asks Postgres only for a new day; and
    the dedupe window (``KEEL_EVENTS_DEDUPE_DAYS``) the writers claim keys in."""

    def __init__(self, dedupe_days: int = DEFAULT_DEDUPE_DAYS) -> None:
        self.known: set[date] = set()
        self.dedupe_days = dedupe_days

    async def ensure(self, conn: PgConnection, day: date, days: int = 1) -> None:
        wanted = {day + timedelta(days=i) for i in range(days)}
        if wanted <= self.known:
            return
        for attempt in range(3):
            try:
                # Its own transaction on an autocommit connection, a savepoint inside a caller's.
                async with conn.transaction():
                    await conn.execute("SELECT keel_ensure_event_partitions(%s, %s)", (day, days))
                break
            except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                # CREATE TABLE IF NOT EXISTS is not safe against a concurrent creator (another
                # connection, another process): that one made the partition; look again.
                if attempt == 2:
                    raise
        self.known |= wanted

    async def keep_probes(self, conn: PgConnection, today: date) -> int:
        """The window's closed days (the ``dedupe_days`` before ``today``) get the hash index
        WINDOW_PROBE reads them by, and the days before the window lose theirs (migration 0090's
        ``keel_keep_event_probes``: once a day has been closed for an hour; a partition whose lock
        is not free within a second is left for the next call); how many were built."""
        if not self.dedupe_days:
            return 0
        async with conn.transaction():
            cursor = await conn.execute(
                "SELECT keel_keep_event_probes(%s, %s)",
                (today - timedelta(days=self.dedupe_days), self.dedupe_days),
            )
            (built,) = await cursor.fetchone() or (0,)
        return int(built)

    async def ensure_for(self, conn: PgConnection, rows: list[EventRow]) -> None:
        # With a window, keys near the end of a day are claimed on the next day too.
        days = 2 if self.dedupe_days else 1
        for midnight in _days(rows):
            await self.ensure(conn, midnight.date(), days)


class Writer(Protocol):
    """Where :func:`api.events.services.ingest` stores rows."""

    async def write(self, rows: list[EventRow]) -> int:
        """Store ``rows`` (no key twice) durably; returns how many were new."""
        ...

    async def live_orgs(self, org_ids: set[uuid.UUID]) -> dict[uuid.UUID, OrgStatus]: ...

    async def run(self, work: Callable[[PgConnection], Awaitable[R]]) -> R:
        """``work`` on a connection of this writer's: inside the session's transaction, or (the
        API's writer) an autocommit one, where ``work`` opens its own transaction if it needs one."""
        ...


async def session_connection(session: AsyncSession) -> PgConnection:
    """The psycopg connection under a session, inside the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    pg: PgConnection = raw.driver_connection  # type: ignore[assignment]
    return pg


@dataclass(frozen=True, slots=True)
class SessionWriter:
    """Rows join the session's transaction; they are durable when the caller commits."""

    session: AsyncSession
    partitions: PartitionKeeper

    async def write(self, rows: list[EventRow]) -> int:
        conn = await session_connection(self.session)
        await self.partitions.ensure_for(conn, rows)
        return await store(conn, rows, self.partitions.dedupe_days)

    async def live_orgs(self, org_ids: set[uuid.UUID]) -> dict[uuid.UUID, OrgStatus]:
        return await live_orgs(await session_connection(self.session), org_ids)

    async def run(self, work: Callable[[PgConnection], Awaitable[R]]) -> R:
        return await work(await session_connection(self.session))


def make_ingest_pool(conninfo: str, *, max_size: int = 10) -> AsyncConnectionPool[PgConnection]:
    """Autocommit connections for the ingest path: one statement is one transaction, one round trip.

    Not opened; the app's lifespan opens and closes it."""
    return AsyncConnectionPool(
        conninfo,
        min_size=SHARED_WRITERS,
        max_size=max_size,
        kwargs={"autocommit": True},
        open=False,
        name="keel-ingest",
    )


@dataclass(slots=True)
class _Pending:
    rows: list[EventRow]
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EventWriter:
    """The API's writer: autocommit statements, small requests sharing them (module docstring)."""

    def __init__(self, pool: AsyncConnectionPool[PgConnection], partitions: PartitionKeeper) -> None:
        self.pool, self.partitions = pool, partitions
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"keel-events-{i}") for i in range(SHARED_WRITERS)
        ]

    async def stop(self) -> None:
        """After the server stopped taking requests: finish what is queued, then end the writers."""
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def write(self, rows: list[EventRow]) -> int:
        if len(rows) > SHARED_MAX_ROWS:
            async with self.pool.connection() as conn:
                await self.partitions.ensure_for(conn, rows)
                return await store(conn, rows, self.partitions.dedupe_days)
        pending = _Pending(rows)
        self._queue.put_nowait(pending)
        return await pending.done

    async def live_orgs(self, org_ids: set[uuid.UUID]) -> dict[uuid.UUID, OrgStatus]:
        async with self.pool.connection() as conn:
            return await live_orgs(conn, org_ids)

    async def run(self, work: Callable[[PgConnection], Awaitable[R]]) -> R:
        async with self.pool.connection() as conn:
            return await work(conn)

    def _take_group(self, first: _Pending) -> list[_Pending]:
        group, size = [first], len(first.rows)
        while size < GROUP_MAX_ROWS and not self._queue.empty():
            pending = self._queue.get_nowait()
            group.append(pending)
            size += len(pending.rows)
        return group

    async def _run(self) -> None:
        while True:
            group = self._take_group(await self._queue.get())
            try:
                await self._write_group(group)
            except Exception as exc:  # one request alone: its own error; several: each again alone
                if len(group) == 1:
                    _settle(group[0], exc)
                else:
                    log.warning("a shared event statement failed; retrying its requests one by one")
                    for pending in group:
                        try:
                            await self._write_group([pending])
                        except Exception as alone:
                            _settle(pending, alone)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _write_group(self, group: list[_Pending]) -> None:
        # Two requests may carry the same key: the first one queued stores it, the other counts a
        # duplicate, exactly as if their statements had run one after the other.
        rows: list[EventRow] = []
        owners: list[int] = []
        seen: set[EventKey] = set()
        for number, pending in enumerate(group):
            for row in pending.rows:
                key = (row.organization_id, row.message_id)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    owners.append(number)
        stored = [0] * len(group)
        if rows:
            async with self.pool.connection() as conn:
                await self.partitions.ensure_for(conn, rows)
                for position in await store_returning(conn, rows, self.partitions.dedupe_days):
                    stored[owners[position]] += 1
        for pending, count in zip(group, stored, strict=True):
            _settle(pending, count)


def _settle(pending: _Pending, outcome: int | BaseException) -> None:
    if pending.done.done():  # the request went away (client gone); its rows are stored regardless
        return
    if isinstance(outcome, BaseException):
        pending.done.set_exception(outcome)
    else:
        pending.done.set_result(outcome)


async def keep_event_partitions(
    pool: AsyncConnectionPool[PgConnection], keeper: PartitionKeeper, every: float = 3600
) -> None:
    """Background upkeep: partitions for today and the week ahead exist before they are needed,
    and the window's closed days have their probe index (:meth:`PartitionKeeper.keep_probes`)."""
    while True:
        try:
            async with pool.connection() as conn:
                keeper.known.clear()
                today = datetime.now(UTC).date()
                await keeper.ensure(conn, today, PARTITION_DAYS_AHEAD)
                await keeper.keep_probes(conn, today)
        except Exception:
            log.warning("could not keep the event partitions", exc_info=True)
        await asyncio.sleep(every)
