"""The dedupe window's probe of closed days (migration 0090): a hash index of the key's 64-bit hash
on each closed day's partition, built and dropped by the partition upkeep, read by the ingest
statement, and exact (a hash collision never makes a new key a duplicate)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import Engine, text

from api.db.engine import libpq_url
from api.events.store import (
    INSERT_EVENTS,
    KEY_HASH,
    PartitionKeeper,
    _params,
    keep_event_partitions,
    make_ingest_pool,
    store,
)
from tests.harness import OrgWorld
from tests.test_events_writer import _row, count

pytestmark = pytest.mark.api

Conn = psycopg.AsyncConnection
MIGRATION = Path(__file__).resolve().parents[1] / "api/db/migrations/versions/0090_event_window_probes.py"


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[Conn]:
    """An autocommit connection as the application role (as the ingest pool's)."""
    opened = await Conn.connect(libpq_url(database_url), autocommit=True)
    yield opened
    await opened.close()


def _noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def _probe_index(day: date) -> str:
    return f"ix_events_p{day:%Y%m%d}_key_hash"


def _indexdef(engine: Engine, day: date) -> str | None:
    with engine.connect() as c:
        found: str | None = c.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": _probe_index(day)}
        ).scalar()
        return found


async def _store(conn: Conn, org_id: uuid.UUID, message_id: str, received_at: datetime) -> int:
    rows = [_row(org_id, message_id, received_at)]
    await PartitionKeeper(1).ensure_for(conn, rows)
    return await store(conn, rows, 1)


@pytest.fixture
def fill(engine: Engine) -> Iterator[Callable[[uuid.UUID, date, int], None]]:
    """``fill(org_id, day, n)``: ``n`` more keys on ``day`` (as the owner, server-side), so the
    planner sees a real day. Removed after the test: the session's database is every later test's
    too (each export reads all of it)."""
    filled: list[tuple[uuid.UUID, date]] = []

    def _fill(org_id: uuid.UUID, day: date, n: int) -> None:
        with engine.begin() as c:
            c.execute(
                text(
                    "INSERT INTO events (organization_id, message_id, event, timestamp, received_at,"
                    " properties, context) SELECT :o, 'fill-' || md5(i::text), 'x', :r, :r, '{}', '{}'"
                    " FROM generate_series(1, :n) AS i"
                ),
                {"o": org_id, "r": _noon(day), "n": n},
            )
            c.execute(text(f"ANALYZE events_p{day:%Y%m%d}"))
        filled.append((org_id, day))

    yield _fill
    with engine.begin() as c:
        for org_id, day in filled:
            c.execute(
                text(
                    f"DELETE FROM events_p{day:%Y%m%d} WHERE organization_id = :o AND message_id LIKE 'fill-%'"
                ),
                {"o": org_id},
            )


def test_the_store_probes_by_the_expression_the_index_holds() -> None:
    spec = importlib.util.spec_from_file_location("keel_migration_0090", MIGRATION)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert KEY_HASH.format(alias="k").replace("k.", "") == migration.KEY_HASH


async def test_a_closed_day_gets_the_probe_and_a_replay_on_it_is_still_found(
    conn: Conn,
    engine: Engine,
    org: OrgWorld,
    other_org: OrgWorld,
    fill: Callable[[uuid.UUID, date, int], None],
) -> None:
    org_id = uuid.UUID(org.id)
    today = datetime.now(UTC).date()
    closed, next_day = today - timedelta(days=2), today - timedelta(days=1)
    first = f"probe-{uuid.uuid4().hex}"
    assert await _store(conn, org_id, first, _noon(closed)) == 1
    fill(org_id, closed, 20_000)
    # The upkeep of a day after `next_day`: its window is `next_day` alone, `closed` loses nothing
    # yet; the upkeep of `next_day`'s own day builds the index on `closed` (closed long since).
    keeper = PartitionKeeper(1)
    await keeper.keep_probes(conn, next_day)
    indexdef = _indexdef(engine, closed)
    assert indexdef is not None and "USING hash" in indexdef and "hashtextextended" in indexdef
    # The ingest statement reads the closed day through it (the planner matches the expression).
    rows = [_row(org_id, f"new-{uuid.uuid4().hex}", _noon(next_day))]
    await PartitionKeeper(1).ensure_for(conn, rows)
    plan = "\n".join(
        r[0] for r in await (await conn.execute("EXPLAIN " + INSERT_EVENTS, _params(rows, 1))).fetchall()
    )
    assert f"Bitmap Index Scan on {_probe_index(closed)}" in plan
    # A replay the next day is found through it; a new key is stored; a new org's copy of the id too.
    assert await _store(conn, org_id, first, _noon(next_day)) == 0
    assert await _store(conn, org_id, f"new-{uuid.uuid4().hex}", _noon(next_day)) == 1
    assert await _store(conn, uuid.UUID(other_org.id), first, _noon(next_day)) == 1
    assert count(engine, org_id, first) == 1
    # Built once: a second upkeep builds nothing; the index is maintained if a late row arrives.
    assert await keeper.keep_probes(conn, next_day) == 0
    late = f"late-{uuid.uuid4().hex}"
    assert await _store(conn, org_id, late, _noon(closed)) == 1
    assert await _store(conn, org_id, late, _noon(next_day)) == 0


async def test_a_key_that_collides_in_the_hash_index_is_still_stored(
    conn: Conn, engine: Engine, org: OrgWorld, fill: Callable[[uuid.UUID, date, int], None]
) -> None:
    """Two message ids whose entries share the hash index's bucket hash (a 32-bit hash of the key's
    64-bit hash, found by trying ids): the bitmap scan returns the stored one's row for the other,
    and the recheck on the key itself refuses it."""
    org_id = uuid.UUID(org.id)
    today = datetime.now(UTC).date()
    closed, next_day = today - timedelta(days=2), today - timedelta(days=1)
    expression = KEY_HASH.format(alias="c").replace("c.message_id", "m").replace("c.organization_id", ":o")
    with engine.connect() as c:
        stored, other = c.execute(
            text(
                f"SELECT (array_agg(m))[1], (array_agg(m))[2] FROM ("
                f" SELECT m, hashint8({expression}) AS h"
                " FROM (SELECT 'coll-' || i AS m FROM generate_series(1, 400000) AS i) AS ids) AS t"
                " GROUP BY h HAVING count(*) > 1 LIMIT 1"
            ),
            {"o": org_id},
        ).one()
        assert stored != other
        same_bucket_hash, same_key_hash = c.execute(
            text(
                f"SELECT hashint8(a) = hashint8(b), a = b FROM (SELECT"
                f" {expression.replace('m,', ':a,')} AS a, {expression.replace('m,', ':b,')} AS b) AS t"
            ),
            {"o": org_id, "a": stored, "b": other},
        ).one()
        assert same_bucket_hash and not same_key_hash
    assert await _store(conn, org_id, stored, _noon(closed)) == 1
    fill(org_id, closed, 20_000)
    await PartitionKeeper(1).keep_probes(conn, next_day)
    assert _indexdef(engine, closed) is not None
    # The bitmap scan does return the stored key's row for the other (a bucket hash match), and
    # the recheck removes it (EXPLAIN ANALYZE of the statement, rolled back).
    rows = [_row(org_id, other, _noon(next_day))]
    await PartitionKeeper(1).ensure_for(conn, rows)
    async with conn.transaction(force_rollback=True):
        cursor = await conn.execute("EXPLAIN (ANALYZE) " + INSERT_EVENTS, _params(rows, 1))
        plan = "\n".join(r[0] for r in await cursor.fetchall())
    removed = re.search(r"Rows Removed by Index Recheck: (\d+)", plan)
    assert removed is not None and int(removed.group(1)) >= 1, plan
    assert await _store(conn, org_id, other, _noon(next_day)) == 1
    assert await _store(conn, org_id, stored, _noon(next_day)) == 0
    assert count(engine, org_id, other) == 1 and count(engine, org_id, stored) == 1


async def test_open_days_get_no_probe_and_days_before_the_window_lose_theirs(
    conn: Conn, engine: Engine, org: OrgWorld
) -> None:
    today = datetime.now(UTC).date()
    old = today - timedelta(days=3)
    rows = [_row(uuid.UUID(org.id), f"old-{uuid.uuid4().hex}", _noon(old))]
    await PartitionKeeper(1).ensure_for(conn, rows)
    await PartitionKeeper(1).ensure(conn, today, 2)
    # A window of four days ending today: `old` (closed) gets its probe, today never (still open).
    assert await PartitionKeeper(4).keep_probes(conn, today + timedelta(days=1)) >= 1
    assert _indexdef(engine, old) is not None
    assert _indexdef(engine, today) is None
    # The upkeep of a window that starts after `old`: its probe goes (no statement reads it).
    await PartitionKeeper(1).keep_probes(conn, today)
    assert _indexdef(engine, old) is None
    # No window, no probes (and nothing asked of Postgres).
    assert await PartitionKeeper(0).keep_probes(conn, today) == 0


async def test_the_upkeep_function_refuses_a_bad_span(conn: Conn) -> None:
    for days in (0, 63, None):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            await conn.execute("SELECT keel_keep_event_probes(current_date, %s)", (days,))


async def test_the_api_upkeep_builds_the_probes_of_the_window(database_url: str, engine: Engine) -> None:
    """keep_event_partitions (the API's hourly upkeep) builds them: with a two-day window the day
    before yesterday (closed whatever the hour) gets its index on the upkeep's first pass."""
    today = datetime.now(UTC).date()
    closed = today - timedelta(days=2)
    pool = make_ingest_pool(libpq_url(database_url))
    await pool.open()
    try:
        async with pool.connection() as c:
            await PartitionKeeper(1).ensure(c, closed)
            # A window starting tomorrow: every probe before it goes (one another test built).
            await c.execute("SELECT keel_keep_event_probes(%s, 1)", (today + timedelta(days=1),))
        assert _indexdef(engine, closed) is None
        upkeep = asyncio.create_task(keep_event_partitions(pool, PartitionKeeper(2), every=3600))
        try:
            for _ in range(600):
                if _indexdef(engine, closed) is not None:
                    break
                await asyncio.sleep(0.05)
        finally:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
        assert _indexdef(engine, closed) is not None
    finally:
        await pool.close()
