"""The ingest path's writer: requests sharing a statement are still answered one by one, exactly."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import psycopg
import pytest
from sqlalchemy import Engine, text

from api.db.engine import libpq_url
from api.events.store import EventRow, EventWriter, PartitionKeeper, make_ingest_pool
from tests.harness import OrgWorld, auth


def count(engine: Engine, org_id: str | uuid.UUID, message_id: str | None = None) -> int:
    where = " AND message_id = :m" if message_id else ""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(f"SELECT count(*) FROM events WHERE organization_id = :o{where}"),
                {"o": str(org_id), "m": message_id},
            ).scalar_one()
        )


def test_concurrent_single_events_with_shared_keys_are_stored_once(
    live_server, engine: Engine, org: OrgWorld
) -> None:
    """Many single events at once (they share statements); every key is sent by two clients."""
    keys = [f"shared-{uuid.uuid4().hex}" for _ in range(30)]
    bodies = [{"event": "page.viewed", "user_id": "u", "message_id": key} for key in keys for _ in (1, 2)]

    def send(body: dict) -> dict:
        with httpx.Client(base_url=live_server.url, timeout=30) as client:
            response = client.post("/v1/events", json=body, headers=auth(org.ingest_key))
            assert response.status_code == 200, response.text
            return response.json()

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(send, bodies))
    assert sum(a["accepted"] for a in answers) == len(keys)
    assert sum(a["duplicates"] for a in answers) == len(keys)
    assert all(a["accepted"] + a["duplicates"] == 1 for a in answers)
    assert count(engine, org.id) == len(keys)


def _row(org_id: uuid.UUID, message_id: str, received_at: datetime) -> EventRow:
    return EventRow(
        organization_id=org_id, message_id=message_id, event="x", user_id="u", anonymous_id=None,
        timestamp=received_at, sent_at=None, received_at=received_at,
        properties=msgspec.Raw(b"{}"), context=msgspec.Raw(b"{}"),
    )  # fmt: skip


async def test_a_failing_request_does_not_fail_the_requests_sharing_its_statement(
    database_url: str, engine: Engine, org: OrgWorld, caplog: pytest.LogCaptureFixture
) -> None:
    org_id, now = uuid.UUID(org.id), datetime.now(UTC)
    pool = make_ingest_pool(libpq_url(database_url))
    await pool.open()
    writer = EventWriter(pool, PartitionKeeper())
    writer.start()
    try:
        # Queued before the writers run, so they share a statement; the third row is longer than
        # Postgres stores (validation would never let it through: this stands for any row
        # Postgres refuses).
        good = [_row(org_id, f"good-{i}", now) for i in range(2)]
        bad = _row(org_id, "x" * 200, now)
        results = await asyncio.gather(
            writer.write([good[0]]), writer.write([bad]), writer.write([good[1]]), return_exceptions=True
        )
    finally:
        await writer.stop()
        await pool.close()
    assert "retrying its requests one by one" in caplog.text  # they did share a statement
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], psycopg.errors.StringDataRightTruncation)
    assert count(engine, org_id) == 2


async def test_concurrent_partition_creation_is_not_an_error(database_url: str) -> None:
    """Two processes meeting a new day at once both succeed (CREATE TABLE IF NOT EXISTS alone races)."""
    day = (datetime.now(UTC) + timedelta(days=400 + uuid.uuid4().int % 1000)).date()
    conns = [
        await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True) for _ in range(6)
    ]
    try:
        await asyncio.gather(*(PartitionKeeper().ensure(conn, day, 2) for conn in conns))
        row = await (await conns[0].execute("SELECT to_regclass(%s)", (f"events_p{day:%Y%m%d}",))).fetchone()
        assert row is not None and row[0] is not None
    finally:
        for conn in conns:
            await conn.close()
