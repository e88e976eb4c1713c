"""Retention's privileged path: pruning records a checkpoint, verify still passes, and nothing else deletes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.audit.services import Pruned, prune_audit
from api.db.engine import make_async_engine, make_sessionmaker
from pipelines.lake import Lake
from pipelines.tasks.export import AUDIT_LOG, export_table
from tests.harness import OrgWorld, audit_rows, auth, make_org
from tests.test_audit_export import download, run_script
from tests.test_audit_ingest import entry
from tests.test_audit_verify import tamper, verify


@pytest.fixture
def org(client: httpx.Client, engine: Engine) -> OrgWorld:
    """Members invited and accepted over HTTP: the chain these tests walk and tamper with holds
    the entries of those invitations."""
    return make_org(client, engine, invite_through_api=True)


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def prune(engine: AsyncEngine, chain_key: str, before: datetime) -> Pruned:
    async with make_sessionmaker(engine)() as session, session.begin():
        return await prune_audit(session, chain_key=chain_key, before=before)


def age_and_export(engine: Engine, database_url: str, org: OrgWorld, tmp_path: Path) -> None:
    """Make the org's entries prunable: recorded 400 days ago (past the 365 days Postgres enforces;
    recorded_at is not hashed, so the owner moves it with the triggers off), and in a lake."""
    tamper(
        engine,
        "UPDATE audit_log SET recorded_at = recorded_at - interval '400 days' WHERE chain_key = :k",
        k=org.id,
    )
    export_table(database_url, Lake.open(str(tmp_path / "lake")), AUDIT_LOG)


def add(client: httpx.Client, org: OrgWorld, n: int) -> None:
    for i in range(n):
        assert (
            client.post(
                "/v1/audit-logs", json=entry(metadata={"i": i}), headers=auth(org.ingest_key)
            ).status_code
            == 201
        )


def refused(engine: Engine, *statements: str, **params: object) -> str:
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)
    return str(caught.value.orig)


async def test_pruning_keeps_the_chain_verifiable(
    client: httpx.Client,
    engine: Engine,
    async_engine: AsyncEngine,
    org: OrgWorld,
    tmp_path: Path,
    offline_script: Path,
    database_url: str,
) -> None:
    add(client, org, 4)
    age_and_export(engine, database_url, org, tmp_path)
    rows = audit_rows(engine, organization_id=org.id)
    rows.sort(key=lambda r: r["seq"])
    cut = rows[7]["recorded_at"]  # everything recorded before the eighth entry goes
    expected_through = min(r["seq"] for r in rows if r["recorded_at"] >= cut) - 1

    pruned = await prune(async_engine, org.id, cut)
    assert pruned == Pruned(chain_key=org.id, through_seq=expected_through, removed=expected_through)
    remaining = audit_rows(engine, organization_id=org.id)
    assert min(r["seq"] for r in remaining) == expected_through + 1
    with engine.connect() as conn:
        checkpoint = conn.execute(
            text("SELECT seq, entry_id, hash, removed FROM audit_checkpoints WHERE chain_key = :k"),
            {"k": org.id},
        ).one()
    last_removed = rows[expected_through - 1]
    assert tuple(checkpoint) == (expected_through, last_removed["id"], last_removed["hash"], expected_through)

    report = verify(client, org)
    assert report["ok"] is True and report["entries_checked"] == len(remaining), report
    assert report["checkpoint"] == {"seq": expected_through, "hash": last_removed["hash"]}
    # Pruning again with the same cut finds nothing more to remove.
    assert (await prune(async_engine, org.id, cut)).removed == 0

    # The export starts after the checkpoint, anchored to its hash, and still re-verifies offline.
    add(client, org, 2)
    export = download(client, org, tmp_path / "after-prune.jsonl")
    result = run_script(offline_script, export)
    assert result.returncode == 0, result.stderr
    assert f"starts after: {last_removed['hash']}" in result.stdout
    assert verify(client, org)["ok"] is True


async def test_pruning_a_whole_chain_then_writing_again(
    client: httpx.Client,
    engine: Engine,
    async_engine: AsyncEngine,
    org: OrgWorld,
    database_url: str,
    tmp_path: Path,
) -> None:
    age_and_export(engine, database_url, org, tmp_path)
    everything = await prune(async_engine, org.id, datetime.now(UTC) + timedelta(days=1))
    assert everything.removed == everything.through_seq and everything.removed >= 10
    empty = verify(client, org)
    assert empty["ok"] is True and empty["entries_checked"] == 0
    assert empty["checkpoint"] == empty["head"]
    add(client, org, 1)
    assert verify(client, org) | {"head": None} == {
        "ok": True, "entries_checked": 1, "first_broken": None, "head": None, "checkpoint": empty["checkpoint"],
    }  # fmt: skip


async def test_nothing_else_deletes(
    client: httpx.Client,
    engine: Engine,
    async_engine: AsyncEngine,
    org: OrgWorld,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Not even the owner's session (``engine``) deletes outside keel_audit_prune, whatever it sets."""
    add(client, org, 2)
    age_and_export(engine, database_url, org, tmp_path)
    rows = sorted(audit_rows(engine, organization_id=org.id), key=lambda r: r["seq"])
    await prune(async_engine, org.id, rows[3]["recorded_at"])
    k = org.id
    assert "append-only" in refused(engine, "DELETE FROM audit_log WHERE chain_key = :k", k=k)
    # Setting the function's flag by hand is not enough: no checkpoint covers these entries.
    assert "append-only" in refused(
        engine,
        "SELECT set_config('keel.audit_prune', :k, true)",
        "DELETE FROM audit_log WHERE chain_key = :k",
        k=k,
    )
    assert "append-only" in refused(engine, "TRUNCATE audit_log")
    assert "append-only" in refused(engine, "UPDATE audit_log SET action = 'x' WHERE chain_key = :k", k=k)
    # Checkpoints must name a real entry with its real hash, and never change.
    assert "does not match an entry" in refused(
        engine, "INSERT INTO audit_checkpoints (chain_key, seq, entry_id, hash, removed)"
        " SELECT chain_key, seq, id, repeat('0', 64), 0 FROM audit_log WHERE chain_key = :k ORDER BY seq DESC LIMIT 1", k=k,
    )  # fmt: skip
    assert "append-only" in refused(engine, "DELETE FROM audit_checkpoints WHERE chain_key = :k", k=k)
    assert "append-only" in refused(
        engine, "UPDATE audit_checkpoints SET hash = repeat('0', 64) WHERE chain_key = :k", k=k
    )
    assert "only move forward" in refused(
        engine, "UPDATE audit_chain_heads SET seq = seq - 1 WHERE chain_key = :k", k=k
    )
    assert "only move forward" in refused(engine, "DELETE FROM audit_chain_heads WHERE chain_key = :k", k=k)
    # The function itself refuses a point that is not an entry of the chain.
    assert "nothing to prune through" in refused(engine, "SELECT keel_audit_prune(:k, 1)", k=k)
    assert verify(client, org)["ok"] is True


async def test_a_doctored_checkpoint_is_evident(
    client: httpx.Client,
    engine: Engine,
    async_engine: AsyncEngine,
    org: OrgWorld,
    database_url: str,
    tmp_path: Path,
) -> None:
    age_and_export(engine, database_url, org, tmp_path)
    rows = sorted(audit_rows(engine, organization_id=org.id), key=lambda r: r["seq"])
    await prune(async_engine, org.id, rows[4]["recorded_at"])
    first_left = min(r["seq"] for r in audit_rows(engine, organization_id=org.id))
    tamper(engine, "UPDATE audit_checkpoints SET hash = repeat('a', 64) WHERE chain_key = :k", k=org.id)
    report = verify(client, org)
    assert report["ok"] is False and report["first_broken"]["seq"] == first_left
    assert "prev_hash does not match" in report["first_broken"]["reason"]
