"""Exact dedupe across days: keys held by their day's events partition (its unique index,
migration 0080), replays found in the dedupe window (KEEL_EVENTS_DEDUPE_DAYS), and the day
boundary where two claims race, which meet in ``event_keys``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import Engine, text

from api.db.engine import libpq_url
from api.events.store import BOUNDARY, PartitionKeeper, store
from api.settings import DEFAULT_DEDUPE_DAYS, MAX_DEDUPE_DAYS, SettingsError, load_settings
from tests.harness import OrgWorld, auth
from tests.test_events_writer import _row, count

pytestmark = pytest.mark.api

Conn = psycopg.AsyncConnection


@pytest_asyncio.fixture
async def conns(database_url: str) -> AsyncIterator[list[Conn]]:
    """Two autocommit connections as the application role (as the ingest pool's)."""
    opened = [await Conn.connect(libpq_url(database_url), autocommit=True) for _ in range(2)]
    yield opened
    for conn in opened:
        await conn.close()


def _midnight(days_from_today: int) -> datetime:
    today = datetime.now(UTC).date() + timedelta(days=days_from_today)
    return datetime(today.year, today.month, today.day, tzinfo=UTC)


def _tomorrow_too(received: datetime) -> list[str]:
    """The next day's key partition, when the claim runs in its day's last hour (``BOUNDARY``) and
    ``received`` is on that day: a claim made that close to midnight is claimed on the next day as
    well as a receipt that close would be."""
    now = datetime.now(UTC)
    if received.date() == now.date() and now >= _midnight(1) - BOUNDARY:
        return [f"event_keys_p{_midnight(1):%Y%m%d}"]
    return []


async def _claim(conn: Conn, org_id: uuid.UUID, message_id: str, received_at: datetime, days: int = 1) -> int:
    rows = [_row(org_id, message_id, received_at)]
    await PartitionKeeper(days).ensure_for(conn, rows)
    return await store(conn, rows, days)


async def _waits_for_a_lock(engine: Engine, pid: int) -> bool:
    """Whether the backend ``pid`` comes to wait for a lock (another transaction's key)."""
    for _ in range(200):
        with engine.connect() as conn:
            waiting = conn.execute(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
            ).scalar()
        if waiting:
            return True
        await asyncio.sleep(0.05)
    return False


def _held(engine: Engine, table: str, org_id: uuid.UUID, message_id: str) -> list[str]:
    """The partitions of ``table`` (events or event_keys) holding the key, by day."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    f"SELECT tableoid::regclass::text FROM {table}"
                    " WHERE organization_id = :o AND message_id = :m ORDER BY received_at"
                ),
                {"o": org_id, "m": message_id},
            ).scalars()
        )


def _key_days(engine: Engine, org_id: uuid.UUID, message_id: str) -> list[str]:
    """Where the key is claimed in ``event_keys`` (only near a day boundary)."""
    return _held(engine, "event_keys", org_id, message_id)


async def test_a_replay_inside_the_window_stores_nothing_twice(
    conns: list[Conn], engine: Engine, org: OrgWorld
) -> None:
    org_id = uuid.UUID(org.id)
    first = _midnight(-1) + timedelta(hours=2)  # yesterday, far from the boundary
    for days, replay_at, stored in [
        (1, first + timedelta(hours=20), 0),  # the same day
        (1, first + timedelta(hours=23, minutes=59), 0),  # the next day, under 24 h later
        (1, _midnight(1) - timedelta(seconds=1), 0),  # the next day's last second (~46 h later)
        (0, first + timedelta(hours=23), 1),  # a window of 0: the same UTC day only
    ]:
        key = f"win-{uuid.uuid4().hex}"
        assert await _claim(conns[0], org_id, key, first, days) == 1
        assert await _claim(conns[0], org_id, key, replay_at, days) == stored, (days, replay_at)
        assert count(engine, org_id, key) == 1 + stored
    # Claimed today on time, replayed tomorrow: found by reading today's partition.
    key = f"win-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    assert await _claim(conns[0], org_id, key, now) == 1
    # Far from the day's boundary (not in its first or last hour) the events row alone holds it.
    if _midnight(0) + BOUNDARY <= now < _midnight(1) - BOUNDARY:
        assert _key_days(engine, org_id, key) == []
    assert _held(engine, "events", org_id, key) == [f"events_p{now:%Y%m%d}"]
    assert await _claim(conns[1], org_id, key, _midnight(1) + timedelta(hours=1)) == 0
    assert count(engine, org_id, key) == 1
    # The key is held by its day's events partition (its unique index), not by a global index;
    # claimed after its day ended (late), by the next day's key partition too.
    key = f"win-{uuid.uuid4().hex}"
    assert await _claim(conns[0], org_id, key, first) == 1
    assert _held(engine, "events", org_id, key) == [f"events_p{first:%Y%m%d}"]
    assert _key_days(engine, org_id, key) == [f"event_keys_p{_midnight(0):%Y%m%d}"]


async def test_a_replay_older_than_the_window_is_stored_again(
    conns: list[Conn], engine: Engine, org: OrgWorld
) -> None:
    """The window is the guarantee's bound (documented: docs/api.md), not a best effort beyond."""
    org_id = uuid.UUID(org.id)
    key = f"old-{uuid.uuid4().hex}"
    first = _midnight(-3) + timedelta(hours=2)
    assert await _claim(conns[0], org_id, key, first, 1) == 1
    # Three days on, a one-day window reads yesterday only (the key is on its day and the next).
    assert await _claim(conns[0], org_id, key, first + timedelta(days=3), 1) == 1
    assert count(engine, org_id, key) == 2
    # With a window of two days the same replay is found.
    key = f"old-{uuid.uuid4().hex}"
    assert await _claim(conns[0], org_id, key, first, 2) == 1
    assert await _claim(conns[0], org_id, key, first + timedelta(days=2), 2) == 0
    assert count(engine, org_id, key) == 1


async def test_claims_racing_across_midnight_store_the_event_once(
    conns: list[Conn], engine: Engine, org: OrgWorld
) -> None:
    """A claim on one day, not yet committed, and the same key's claim just after midnight: the
    second must not miss the first (a read of the previous day would, under MVCC)."""
    org_id = uuid.UUID(org.id)
    key = f"midnight-{uuid.uuid4().hex}"
    before, after = _midnight(0) - timedelta(seconds=1), _midnight(0) + timedelta(seconds=1)
    late, early = conns
    async with late.transaction():
        assert await _claim(late, org_id, key, before) == 1
        second = asyncio.create_task(_claim(early, org_id, key, after))
        assert await _waits_for_a_lock(engine, early.info.backend_pid)
    assert await second == 0
    assert count(engine, org_id, key) == 1
    # Stored on its day; both claims near the boundary met on the next day's key partition.
    assert _held(engine, "events", org_id, key) == [f"events_p{before:%Y%m%d}"]
    assert _key_days(engine, org_id, key) == [f"event_keys_p{after:%Y%m%d}", *_tomorrow_too(after)]


async def test_claims_racing_across_midnight_meet_whichever_runs_first(
    conns: list[Conn], engine: Engine, org: OrgWorld
) -> None:
    """The other order: the claim just after midnight holds its transaction open, the previous
    day's claim (late) must wait for it, and then count a duplicate."""
    org_id = uuid.UUID(org.id)
    key = f"midnight-{uuid.uuid4().hex}"
    before, after = _midnight(0) - timedelta(seconds=1), _midnight(0) + timedelta(seconds=1)
    early, late = conns
    async with early.transaction():
        assert await _claim(early, org_id, key, after) == 1
        second = asyncio.create_task(_claim(late, org_id, key, before))
        assert await _waits_for_a_lock(engine, late.info.backend_pid)
    assert await second == 0
    assert count(engine, org_id, key) == 1
    assert _held(engine, "events", org_id, key) == [f"events_p{after:%Y%m%d}"]


async def test_a_late_claim_finds_an_event_stored_the_next_day_far_from_midnight(
    conns: list[Conn], engine: Engine, org: OrgWorld
) -> None:
    """A request received before midnight whose statement runs hours later, after a replay stored
    today outside the boundary's hour: the late claim reads the next day's partition too."""
    org_id = uuid.UUID(org.id)
    key = f"late-{uuid.uuid4().hex}"
    assert await _claim(conns[0], org_id, key, _midnight(0) + 3 * BOUNDARY) == 1
    assert await _claim(conns[1], org_id, key, _midnight(0) - BOUNDARY / 2) == 0
    assert count(engine, org_id, key) == 1
    # With a window of 0 days nothing is read or claimed across days: stored on each day.
    key = f"late-{uuid.uuid4().hex}"
    assert await _claim(conns[0], org_id, key, _midnight(0) + 3 * BOUNDARY, 0) == 1
    assert await _claim(conns[1], org_id, key, _midnight(0) - BOUNDARY / 2, 0) == 1
    assert count(engine, org_id, key) == 2
    assert _key_days(engine, org_id, key) == []


async def test_a_late_claim_of_the_previous_day_meets_the_next_days_key(
    conns: list[Conn], engine: Engine, org: OrgWorld
) -> None:
    """A request received before midnight whose statement runs after a replay stored today."""
    org_id = uuid.UUID(org.id)
    key = f"late-{uuid.uuid4().hex}"
    assert await _claim(conns[0], org_id, key, _midnight(0) + timedelta(seconds=5)) == 1
    assert await _claim(conns[1], org_id, key, _midnight(0) - BOUNDARY / 2) == 0
    assert count(engine, org_id, key) == 1


async def test_only_keys_near_a_day_boundary_are_claimed_in_event_keys(
    conns: list[Conn], engine: Engine, org: OrgWorld
) -> None:
    org_id = uuid.UUID(org.id)
    # Received in the day's first hour: claimed on its own day's key partition too.
    early = _midnight(0) + timedelta(seconds=5)
    key = f"plain-{uuid.uuid4().hex}"
    assert await _claim(conns[0], org_id, key, early) == 1
    assert _key_days(engine, org_id, key) == [f"event_keys_p{early:%Y%m%d}", *_tomorrow_too(early)]
    # Received at yesterday's noon, claimed now: late, so held on the next day.
    key = f"plain-{uuid.uuid4().hex}"
    noon = _midnight(-1) + timedelta(hours=12)
    assert await _claim(conns[0], org_id, key, noon) == 1
    assert _key_days(engine, org_id, key) == [f"event_keys_p{_midnight(0):%Y%m%d}"]
    assert _held(engine, "events", org_id, key) == [f"events_p{noon:%Y%m%d}"]


def test_the_api_finds_a_replay_of_yesterday(
    client: httpx.Client, database_url: str, engine: Engine, org: OrgWorld
) -> None:
    """Through `POST /v1/events/batch`, with the default window (one day)."""
    assert DEFAULT_DEDUPE_DAYS == 1
    org_id = uuid.UUID(org.id)
    key = f"api-{uuid.uuid4().hex}"

    async def yesterday() -> None:
        async with await Conn.connect(libpq_url(database_url), autocommit=True) as conn:
            assert await _claim(conn, org_id, key, _midnight(-1) + timedelta(hours=3)) == 1

    asyncio.run(yesterday())
    body = {"events": [{"event": "x", "user_id": "u", "message_id": key}, {"event": "x", "user_id": "u"}]}
    response = client.post("/v1/events/batch", json=body, headers=auth(org.ingest_key))
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert count(engine, org_id, key) == 1


@pytest.mark.parametrize("value", ["-1", str(MAX_DEDUPE_DAYS + 1), "a day"])
def test_the_dedupe_window_setting_is_checked(value: str) -> None:
    with pytest.raises(SettingsError, match="KEEL_EVENTS_DEDUPE_DAYS"):
        load_settings({"KEEL_EVENTS_DEDUPE_DAYS": value}, env_file=None)
    assert load_settings({"KEEL_EVENTS_DEDUPE_DAYS": "7"}, env_file=None).events_dedupe_days == 7
