"""verify: tampering by the database owner (triggers bypassed) is named at the first broken entry;
concurrent writers never fork a chain; the CLI walks every chain."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.audit.chain import entry_hash
from api.audit.rows import CHUNK_ROWS, snapshot
from api.audit.services import chain_key_of
from api.audit.verify import Split, verify_chain, walk_reader
from api.audit.verify import verify as verify_chains
from api.db.engine import make_async_engine, make_sync_engine
from api.db.migrate import upgrade
from api.settings import Settings
from tests.harness import LiveServer, OrgWorld, auth, make_org
from tests.test_audit_ingest import entry
from tests.test_cli import keel

#: The split a server with default settings verifies with.
SPLIT = Split.of(Settings())


@pytest.fixture
def org(client: httpx.Client, engine: Engine) -> OrgWorld:
    """Members invited and accepted over HTTP: the chain these tests walk and tamper with holds
    the entries of those invitations."""
    return make_org(client, engine, invite_through_api=True)


HASHED = (
    "SELECT id::text AS id, organization_id::text AS organization_id, seq, occurred_at, actor_type, actor_id,"
    " actor_name, action, resource_type, resource_id, metadata, host(ip) AS ip, user_agent, request_id,"
    " source, targets, prev_hash, hash FROM audit_log WHERE chain_key = :k ORDER BY seq"
)


def chain(engine: Engine, org_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(HASHED), {"k": org_id}).mappings()]


def tamper(engine: Engine, sql: str, **params: Any) -> None:
    """Run ``sql`` as the database owner with every trigger bypassed, as an attacker with the keys would."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(sql), params)


def shift(conn: Connection, org_id: str, from_seq: int, by: int) -> None:
    # Two steps, so the (chain_key, seq) unique index never sees two rows on one seq mid-update.
    conn.execute(
        text("UPDATE audit_log SET seq = -seq WHERE chain_key = :k AND seq >= :s"),
        {"k": org_id, "s": from_seq},
    )
    conn.execute(
        text("UPDATE audit_log SET seq = -seq + :by WHERE chain_key = :k AND seq < 0"),
        {"k": org_id, "by": by},
    )


def forged_id(org_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"forged:{org_id}"))


def insert_forged(
    engine: Engine, org_id: str, rows: list[dict[str, Any]], at: int, *, hashed_right: bool
) -> None:
    """Insert an entry at ``at``, moving the later ones up; ``hashed_right``: linked and hashed as Keel would."""
    prev_hash = rows[at - 2]["hash"]
    forged: dict[str, Any] = {
        "id": forged_id(org_id), "organization_id": org_id, "seq": at,
        "occurred_at": rows[at - 2]["occurred_at"], "actor_type": "user", "action": "forged.entry",
        "metadata": {}, "prev_hash": prev_hash,
    }  # fmt: skip
    forged["hash"] = entry_hash(forged, prev_hash) if hashed_right else "f" * 64
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        shift(conn, org_id, at, 1)
        conn.execute(
            text(
                "INSERT INTO audit_log (id, chain_key, seq, organization_id, occurred_at, actor_type, action, metadata,"
                " prev_hash, hash) VALUES (:id, :k, :seq, :org, :occurred_at, 'user', :action, '{}', :prev_hash, :hash)"
            ),
            {**forged, "k": org_id, "org": uuid.UUID(org_id)},
        )


def swap(engine: Engine, org_id: str, a: int, b: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("UPDATE audit_log SET seq = -1 WHERE chain_key = :k AND seq = :a"), {"k": org_id, "a": a}
        )
        conn.execute(
            text("UPDATE audit_log SET seq = :a WHERE chain_key = :k AND seq = :b"),
            {"k": org_id, "a": a, "b": b},
        )
        conn.execute(
            text("UPDATE audit_log SET seq = :b WHERE chain_key = :k AND seq = -1"), {"k": org_id, "b": b}
        )


def rehash(engine: Engine, org_id: str, rows: list[dict[str, Any]], seq: int) -> None:
    """A careful forger: change an entry and give it a hash that matches its new content."""
    changed = {**rows[seq - 1], "action": "member.removed"}
    tamper(engine, "UPDATE audit_log SET action = 'member.removed', hash = :h WHERE chain_key = :k AND seq = :s",
           h=entry_hash(changed, changed["prev_hash"]), k=org_id, s=seq)  # fmt: skip


Tamper = Callable[[Engine, str, list[dict[str, Any]]], None]
# name: (what the attacker does, which original entry verify must name (1-based seq), words of the reason)
TAMPERING: dict[str, tuple[Tamper, Callable[[list[dict[str, Any]]], str], str]] = {
    "change an action": (
        lambda e, k, rows: tamper(e, "UPDATE audit_log SET action = 'org.viewed' WHERE chain_key = :k AND seq = 5", k=k),
        lambda rows: rows[4]["id"], "was changed",
    ),
    "change metadata": (
        lambda e, k, rows: tamper(e, "UPDATE audit_log SET metadata = metadata || '{\"permission\": \"view\"}' WHERE chain_key = :k AND seq = :s", k=k, s=len(rows) - 1),
        lambda rows: rows[-2]["id"], "was changed",
    ),
    "change an ip": (
        lambda e, k, rows: tamper(e, "UPDATE audit_log SET ip = '10.9.8.7' WHERE chain_key = :k AND seq = 3", k=k),
        lambda rows: rows[2]["id"], "was changed",
    ),
    "empty an entry's targets": (
        lambda e, k, rows: tamper(e, "UPDATE audit_log SET targets = '[]' WHERE chain_key = :k AND seq = :s", k=k, s=len(rows)),
        lambda rows: rows[-1]["id"], "was changed",
    ),
    "give an entry other targets": (
        lambda e, k, rows: tamper(e, "UPDATE audit_log SET targets = '[{\"type\": \"user\", \"id\": \"x\"}]' WHERE chain_key = :k AND seq = 2", k=k),
        lambda rows: rows[1]["id"], "was changed",
    ),
    "spell an ip as IPv4-mapped IPv6": (
        lambda e, k, rows: tamper(e, "UPDATE audit_log SET ip = '::ffff:203.0.113.7' WHERE chain_key = :k AND seq = :s", k=k, s=len(rows) - 2),
        lambda rows: rows[-3]["id"], "was changed",
    ),
    "shift a time by a microsecond": (
        lambda e, k, rows: tamper(e, "UPDATE audit_log SET occurred_at = occurred_at + interval '1 microsecond' WHERE chain_key = :k AND seq = 2", k=k),
        lambda rows: rows[1]["id"], "was changed",
    ),
    "change and rehash an entry": (
        lambda e, k, rows: rehash(e, k, rows, 6),
        lambda rows: rows[6]["id"], "prev_hash does not match",
    ),
    "delete the first entry": (
        lambda e, k, rows: tamper(e, "DELETE FROM audit_log WHERE chain_key = :k AND seq = 1", k=k),
        lambda rows: rows[1]["id"], "entries 1..1 are missing",
    ),
    "delete a middle entry": (
        lambda e, k, rows: tamper(e, "DELETE FROM audit_log WHERE chain_key = :k AND seq = 4", k=k),
        lambda rows: rows[4]["id"], "entries 4..4 are missing",
    ),
    "delete the last entries": (
        lambda e, k, rows: tamper(e, "DELETE FROM audit_log WHERE chain_key = :k AND seq >= :s", k=k, s=len(rows) - 1),
        lambda rows: rows[-1]["id"], "stops before its recorded head",
    ),
    "insert a forged entry in the middle": (
        lambda e, k, rows: insert_forged(e, k, rows, 4, hashed_right=True),
        lambda rows: rows[3]["id"], "prev_hash does not match",
    ),
    "append a forged entry": (
        lambda e, k, rows: insert_forged(e, k, rows, len(rows) + 1, hashed_right=False),
        lambda rows: forged_id(rows[0]["organization_id"]), "past the chain's recorded head",
    ),
    "reorder two entries": (
        lambda e, k, rows: swap(e, k, 4, 5),
        lambda rows: rows[4]["id"], "prev_hash does not match",
    ),
}  # fmt: skip


def seed(client: httpx.Client, org: OrgWorld, n: int = 4) -> None:
    for i in range(n):
        response = client.post(
            "/v1/audit-logs",
            json=entry(metadata={"i": i, "permission": "edit"}),
            headers=auth(org.ingest_key),
        )
        assert response.status_code == 201, response.text


def verify(client: httpx.Client, org: OrgWorld) -> dict[str, Any]:
    response = client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("admin"))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampering_is_named_at_the_first_broken_entry(
    client: httpx.Client, engine: Engine, org: OrgWorld, case: str
) -> None:
    seed(client, org)
    rows = chain(engine, org.id)
    clean = verify(client, org)
    assert clean["ok"] is True and clean["entries_checked"] == len(rows) >= 10
    assert clean["head"] == {"seq": len(rows), "hash": rows[-1]["hash"]}

    attack, expected, reason = TAMPERING[case]
    attack(engine, org.id, rows)
    report = verify(client, org)
    assert report["ok"] is False, report
    assert report["first_broken"]["id"] == expected(rows), report
    assert reason in report["first_broken"]["reason"], report


def test_the_cli_names_the_same_entry(
    client: httpx.Client, engine: Engine, org: OrgWorld, database_url: str, tmp_path: Path
) -> None:
    seed(client, org, 1)
    ok = keel("audit", "verify", "--org", org.id, "--json", database_url=database_url, tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True and "verified" in ok.stderr
    rows = chain(engine, org.id)
    tamper(
        engine, "UPDATE audit_log SET actor_id = 'someone-else' WHERE chain_key = :k AND seq = 3", k=org.id
    )
    broken = keel("audit", "verify", "--org", org.id, "--json", database_url=database_url, tmp_path=tmp_path)
    assert broken.returncode == 1, broken.stderr
    report = json.loads(broken.stdout)
    assert report["first_broken"]["id"] == rows[2]["id"] and report["first_broken"]["seq"] == 3
    assert rows[2]["id"] in broken.stderr and "Traceback" not in broken.stderr
    unknown = keel("audit", "verify", "--org", "not-a-uuid", database_url=database_url, tmp_path=tmp_path)
    assert unknown.returncode == 2 and "must be an organization id" in unknown.stderr


def test_the_cli_verifies_every_chain(fresh_database: str, tmp_path: Path) -> None:
    upgrade(fresh_database)
    for i in range(3):
        made = keel(
            "users",
            "create",
            "--email",
            f"u{i}@chains.example",
            database_url=fresh_database,
            tmp_path=tmp_path,
        )
        assert made.returncode == 0, made.stderr
    everything = keel("audit", "verify", "--json", database_url=fresh_database, tmp_path=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert json.loads(everything.stdout) == {
        "ok": True, "entries_checked": 6, "chains_checked": 1, "first_broken": None, "broken_chains": [],
    }  # fmt: skip
    engine = make_sync_engine(fresh_database)
    try:
        tamper(engine, "DELETE FROM audit_log WHERE chain_key = 'platform' AND seq = 2")
    finally:
        engine.dispose()
    broken = keel("audit", "verify", "--json", database_url=fresh_database, tmp_path=tmp_path)
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["broken_chains"] == ["platform"]


def test_eight_concurrent_writers_never_fork_a_chain(
    live_server: LiveServer, engine: Engine, org: OrgWorld
) -> None:
    per_writer, errors = 12, []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as c:
            start.wait()
            for i in range(per_writer):
                if n == 7 and i % 3 == 0:  # Keel's own writes share the chain with the product's
                    response = c.patch(
                        f"/v1/orgs/{org.id}", json={"name": f"Renamed {i}"}, headers=org.headers("owner")
                    )
                else:
                    response = c.post(
                        "/v1/audit-logs",
                        json=entry(metadata={"writer": n, "i": i}),
                        headers=auth(org.ingest_key),
                    )
                if response.status_code >= 300:
                    errors.append(response.text)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = chain(engine, org.id)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert (
        sum(1 for r in rows if r["action"] == "document.shared")
        == 7 * per_writer + per_writer - per_writer // 3
    )
    with httpx.Client(base_url=live_server.url) as c:
        report = verify(c, org)
    assert report["ok"] is True and report["entries_checked"] == len(rows), report


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def test_the_rows_are_read_in_the_snapshot_the_head_was_read_in(
    client: httpx.Client, engine: Engine, org: OrgWorld, async_engine: AsyncEngine
) -> None:
    """The walk's rows come over a second connection: it must see the moment the head was read,
    not an entry appended since (that one would be past the recorded head, a false alarm)."""
    seed(client, org)
    rows = chain(engine, org.id)
    async with snapshot(async_engine) as conn, walk_reader(async_engine, conn) as reader:
        appended = client.post("/v1/audit-logs", json=entry(), headers=auth(org.ingest_key))
        assert appended.status_code == 201, appended.text
        report = await verify_chain(conn, reader, chain_key_of(uuid.UUID(org.id)), split=SPLIT)
        again = await verify_chain(
            conn, reader, chain_key_of(uuid.UUID(org.id)), split=SPLIT
        )  # a second walk, same snapshot
    assert report.ok and report.entries_checked == len(rows) and report.head is not None
    assert report.head.seq == len(rows) and again.entries_checked == len(rows) and again.ok
    now = verify(client, org)
    assert now["ok"] is True and now["entries_checked"] == len(rows) + 1


async def test_a_cancelled_verify_stops_its_thread_and_leaves_nothing_broken(
    client: httpx.Client, org: OrgWorld, async_engine: AsyncEngine
) -> None:
    for n in range(7):  # several chunks of rows
        batch = [entry(metadata={"n": n, "i": i}) for i in range(1000)]
        response = client.post("/v1/audit-logs/batch", json={"entries": batch}, headers=auth(org.ingest_key))
        assert response.status_code == 200 and response.json()["accepted"] == len(batch), response.text
    key = chain_key_of(uuid.UUID(org.id))
    seen: list[int] = []
    running: asyncio.Task[Any] | None = None

    def progress(count: int) -> None:
        seen.append(count)
        assert running is not None
        running.cancel()  # after the first chunk

    running = asyncio.ensure_future(
        verify_chains(async_engine, chain_key=key, progress=progress, split=SPLIT)
    )
    with pytest.raises(asyncio.CancelledError):
        await running
    assert seen and sum(seen) >= CHUNK_ROWS
    whole = await verify_chains(
        async_engine, chain_key=key, split=SPLIT
    )  # the same engine, its pool unharmed
    assert whole.ok and whole.entries_checked >= 7000 > CHUNK_ROWS * 3, whole.as_dict()
