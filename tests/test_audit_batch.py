"""POST /v1/audit-logs/batch and group commit: valid entries stored in order beside rejected ones
(named by index), per-entry idempotency keys, 413 past 1,000 entries, and concurrent writers —
single and batched — that share transactions without forking or reordering the chain."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from sqlalchemy import Engine

from tests.harness import OrgWorld, audit_rows, auth
from tests.test_audit_ingest import entry, verify
from tests.test_bad_input import assert_problem


def post_batch(client: httpx.Client, key: str, entries: list[Any]) -> httpx.Response:
    return client.post("/v1/audit-logs/batch", json={"entries": entries}, headers=auth(key))


def test_valid_entries_are_stored_in_order_and_bad_ones_rejected_by_index(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    entries: list[Any] = [entry(metadata={"i": i}) for i in range(6)]
    entries[1] = entry(action="Not An Action")
    entries[3] = {"action": "x.y"}  # no occurred_at, no actor
    entries[4] = entry(metadata={"note": "a\x00b"})
    entries.append("not an object")
    entries.append(entry(actor={"type": "staff", "id": "s"}))
    response = post_batch(client, org.ingest_key, entries)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 3 and body["duplicates"] == 0
    assert [r["index"] for r in body["rejected"]] == [1, 3, 4, 6, 7]
    assert all(r["error"] for r in body["rejected"])
    assert [r["index"] for r in body["results"]] == list(range(8))
    assert {r["status"] for r in body["results"] if r["index"] in (1, 3, 4, 6, 7)} == {422}
    stored = [r for r in body["results"] if r["status"] == 201]
    seqs = [r["seq"] for r in stored]
    assert seqs == sorted(seqs) and seqs == list(range(seqs[0], seqs[0] + 3))
    rows = {str(row["id"]): row for row in audit_rows(engine, chain_key=org.id)}
    assert [rows[r["id"]]["metadata"]["i"] for r in stored] == [0, 2, 5]
    assert all(rows[r["id"]]["hash"] == r["hash"] for r in stored)
    assert verify(client, org)["ok"] is True


def test_each_entry_has_its_own_idempotency_key(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    entries = [entry(metadata={"i": i}, idempotency_key=f"k-{i}") for i in range(3)]
    first = post_batch(client, org.ingest_key, [*entries, entries[0]]).json()
    # The same key twice in one batch: stored once, the second answered with the first's answer.
    assert [r["status"] for r in first["results"]] == [201, 201, 201, 200]
    assert first["results"][3]["id"] == first["results"][0]["id"]
    before = len(audit_rows(engine, chain_key=org.id))
    again = post_batch(client, org.ingest_key, [*entries, entry(metadata={"i": 9}, idempotency_key="k-1")])
    body = again.json()
    assert body["accepted"] == 0 and body["duplicates"] == 3
    assert [r["id"] for r in body["results"][:3]] == [r["id"] for r in first["results"][:3]]
    assert body["results"][3]["status"] == 409 and body["rejected"][0]["idempotency_key"] == "k-1"
    assert len(audit_rows(engine, chain_key=org.id)) == before
    # The single route shares the keys: its Idempotency-Key header replays a batch entry's answer.
    single = client.post(
        "/v1/audit-logs",
        json=entry(metadata={"i": 2}),
        headers={**auth(org.ingest_key), "Idempotency-Key": "k-2"},
    )
    assert single.status_code == 201 and single.headers["idempotent-replayed"] == "true"
    assert single.json()["id"] == first["results"][2]["id"]


def test_bad_batches_are_precise_problems(client: httpx.Client, org: OrgWorld, other_org: OrgWorld) -> None:
    too_many = post_batch(client, org.ingest_key, [entry()] * 1001)
    assert "at most 1000" in assert_problem(too_many, 413)["detail"]
    assert_problem(
        client.post(
            "/v1/audit-logs/batch",
            content=b"{not json",
            headers={**auth(org.ingest_key), "content-type": "application/json"},
        ),
        400,
    )
    assert_problem(
        client.post("/v1/audit-logs/batch", json={"entries": 3}, headers=auth(org.ingest_key)), 422
    )
    assert_problem(client.post("/v1/audit-logs/batch", json={"entries": []}), 401)
    assert_problem(
        client.post("/v1/audit-logs/batch", json={"entries": [entry()]}, headers=org.headers("owner")), 403
    )
    # An org key naming another org: that entry is refused, the others stored.
    body = post_batch(client, org.ingest_key, [entry(), entry(org_id=other_org.id)]).json()
    assert [r["status"] for r in body["results"]] == [201, 403]
    assert post_batch(client, org.ingest_key, []).json() == {
        "accepted": 0, "duplicates": 0, "rejected": [], "results": [],
    }  # fmt: skip


def test_a_platform_key_writes_to_several_orgs_and_a_gone_org_is_refused(
    client: httpx.Client, org: OrgWorld, other_org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    key = client.post("/v1/admin/ingest-keys", json={"name": "server"}, headers=auth(staff_admin[1])).json()[
        "token"
    ]
    gone = "00000000-0000-7000-8000-000000000000"
    body = post_batch(
        client, key, [entry(org_id=org.id), entry(org_id=other_org.id), entry(org_id=gone), entry()]
    ).json()
    assert [r["status"] for r in body["results"]] == [201, 201, 404, 403]
    assert verify(client, org)["ok"] and verify(client, other_org)["ok"]


def test_concurrent_single_and_batched_writers_share_commits_without_forking_the_chain(
    client: httpx.Client, engine: Engine, org: OrgWorld, live_server: Any
) -> None:
    start = len(audit_rows(engine, chain_key=org.id))
    answered: list[dict[str, Any]] = []
    lock = threading.Lock()

    def singles(worker: int) -> None:
        with httpx.Client(base_url=live_server.url) as c:
            for i in range(15):
                r = c.post(
                    "/v1/audit-logs",
                    json=entry(metadata={"w": worker, "i": i}),
                    headers={**auth(org.ingest_key), "Idempotency-Key": f"s-{worker}-{i}"},
                )
                assert r.status_code == 201, r.text
                with lock:
                    answered.append(r.json())

    def batches(worker: int) -> None:
        with httpx.Client(base_url=live_server.url) as c:
            for b in range(3):
                r = post_batch(
                    c, org.ingest_key, [entry(metadata={"w": worker, "b": b, "i": i}) for i in range(40)]
                )
                assert r.status_code == 200 and r.json()["accepted"] == 40, r.text
                seqs = [x["seq"] for x in r.json()["results"]]
                assert seqs == list(range(seqs[0], seqs[0] + 40))  # a batch is contiguous, in order
                with lock:
                    answered.extend(r.json()["results"])

    threads = [threading.Thread(target=singles, args=(w,)) for w in range(6)]
    threads += [threading.Thread(target=batches, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answered) == 6 * 15 + 2 * 3 * 40
    assert len({a["seq"] for a in answered}) == len(answered)
    assert len(audit_rows(engine, chain_key=org.id)) == start + len(answered)
    result = verify(client, org)
    assert result["ok"] is True, result


def test_a_group_chained_in_advance_onto_a_head_that_moved_is_chained_again(
    client: httpx.Client, engine: Engine, org: OrgWorld, database_url: str
) -> None:
    """The pipelined group commit chains the next group onto the head the group in Postgres will
    leave; if another writer moved the head first (here: a single append), or a key of the group
    was stored meanwhile, the commit chains it again under the lock instead of using it."""
    import asyncio
    import uuid

    from api.audit.batch import AuditAppender, _plan
    from api.db.engine import libpq_url
    from api.events.store import make_ingest_pool
    from tests.test_audit_walk import prepared

    rows = audit_rows(engine, chain_key=org.id)
    head = max((r["seq"], r["hash"]) for r in rows)
    org_id = uuid.UUID(org.id)

    async def run() -> list[Any]:
        pool = make_ingest_pool(libpq_url(database_url), max_size=2)
        await pool.open()
        try:
            appender = AuditAppender(pool)
            stale = _plan(head, prepared(5, {}, org.id), {})
            moved = client.post("/v1/audit-logs", json=entry(), headers=auth(org.ingest_key))
            assert moved.status_code == 201, moved.text
            outcomes = await appender._commit(org_id, prepared(5, {}, org.id), stale)
            keyed = prepared(1, {0: "k-ahead"}, org.id) * 2  # one body, sent twice with its key
            first = await appender._commit(org_id, keyed[:1])
            ahead = _plan((first[0].stored[1], first[0].stored[2]), keyed[1:], {})  # type: ignore[union-attr, index]
            again = await appender._commit(org_id, keyed[1:], ahead)
            return [*outcomes, *first, *again]
        finally:
            await pool.close()

    outcomes = asyncio.run(run())
    assert [o.status_code for o in outcomes] == [201] * 7
    assert [o.replayed for o in outcomes] == [False] * 6 + [True]  # the key stored meanwhile: a replay
    assert outcomes[-1].body == outcomes[-2].body
    seqs = [o.stored[1] for o in outcomes[:5]]
    assert seqs == list(range(head[0] + 2, head[0] + 7))  # after the single append, not onto the stale head
    assert len(audit_rows(engine, chain_key=org.id)) == len(rows) + 1 + 6  # the single, 5, the keyed one
    result = verify(client, org)
    assert result["ok"] is True, result
