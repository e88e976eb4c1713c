"""Retention with audit streams: an entry leaves Postgres only once the lake holds it and every
active (or paused) stream has it; a disabled stream holds nothing back; the chain stays verifiable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.audit.streams.delivery import StreamConfig, StreamWorker
from api.db.engine import make_async_engine
from api.settings import Settings
from tests.harness import OrgWorld, make_org
from tests.receivers import Receiver, hec_events, splunk_hec
from tests.test_audit_prune import add, age_and_export, prune
from tests.test_audit_streams import HEC_TOKEN, create_stream

CONFIG = StreamConfig(batch_size=4, rounds_per_claim=1, retry_base=0.05)


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


def verified(client: httpx.Client, world: OrgWorld) -> dict:
    response = client.get(f"/v1/orgs/{world.id}/audit-logs/verify", headers=world.headers("owner"))
    assert response.status_code == 200, response.text
    return response.json()


def head(engine: Engine, org_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT seq FROM audit_chain_heads WHERE chain_key = :k"), {"k": org_id}
        ).scalar_one()


async def test_pruning_waits_for_every_active_stream(
    hooks_client: httpx.Client,
    engine: Engine,
    async_engine: AsyncEngine,
    hooks_settings: Settings,
    database_url: str,
    tmp_path: Path,
) -> None:
    world = make_org(hooks_client, engine, roles=("owner", "admin"))
    with Receiver(splunk_hec(HEC_TOKEN)) as receiver:
        url = f"http://127.0.0.1:{receiver.port}"
        behind = create_stream(
            hooks_client, world, name="behind", type="splunk_hec", url=url, token=HEC_TOKEN
        )
        paused = create_stream(
            hooks_client, world, name="paused", type="splunk_hec", url=url, token=HEC_TOKEN
        )
        owner = world.headers("owner")
        assert hooks_client.post(
            f"/v1/orgs/{world.id}/audit-streams/{paused['id']}/pause", headers=owner
        ).is_success
        add(hooks_client, world, 10)
        age_and_export(engine, database_url, world, tmp_path)
        now = datetime.now(UTC)

        # In the lake and old enough, but no stream has a single entry yet: nothing goes.
        assert (await prune(async_engine, world.id, now)).through_seq is None

        # One round of the active stream: it has the first 4 entries; the paused one still none.
        async with StreamWorker(hooks_settings, CONFIG) as worker:
            await worker.tick()
        assert (await prune(async_engine, world.id, now)).through_seq is None  # the paused one holds
        assert hooks_client.delete(
            f"/v1/orgs/{world.id}/audit-streams/{paused['id']}", headers=owner
        ).is_success
        pruned = await prune(async_engine, world.id, now)
        assert pruned.through_seq == 4 and pruned.removed == 4
        assert verified(hooks_client, world)["ok"] is True

        # The stream fails past its window and is disabled: it stops holding the rest back.
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_streams SET status = 'disabled', disabled_at = now() WHERE id = :i"),
                {"i": behind["id"]},
            )
        age_and_export(engine, database_url, world, tmp_path)  # the stream's own entries, too
        pruned = await prune(async_engine, world.id, datetime.now(UTC))
        assert pruned.through_seq == head(engine, world.id)
        report = verified(hooks_client, world)
        assert report["ok"] is True and report["checkpoint"]["seq"] == pruned.through_seq
        delivered = [e["event"]["seq"] for a in receiver.arrivals for e in hec_events(a.body)]
    assert delivered == [1, 2, 3, 4]
