"""Product-sent audit entries: POST /v1/audit-logs with an ingest key, idempotency, precise errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from schemathesis import checks
from sqlalchemy import Engine, text

from tests.harness import OrgWorld, audit_rows, auth, make_org
from tests.test_audit_actions_doc import actions_in_doc
from tests.test_bad_input import assert_problem
from tests.test_fuzz_openapi import INJECTED_AUTH_CHECKS
from tests.test_fuzz_openapi import schema as fuzz_schema


def entry(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": "document.shared",
        "occurred_at": "2026-01-15T10:30:00.123456+02:00",
        "actor": {"type": "user", "id": "user_42", "name": "Ada Lovelace"},
        "targets": [{"type": "document", "id": "doc_7", "name": "Q3 plan"}, {"type": "user", "id": "user_9"}],
        "context": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"},
        "metadata": {"permission": "edit", "count": 3, "ratio": 0.25, "notify": True, "note": None},
    }
    body.update(overrides)
    return body


def verify(client: httpx.Client, org: OrgWorld) -> dict[str, Any]:
    response = client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("owner"))
    assert response.status_code == 200, response.text
    return response.json()


def test_an_org_key_records_an_entry_in_its_org_chain(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    response = client.post("/v1/audit-logs", json=entry(), headers=auth(org.ingest_key))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["organization_id"] == org.id and body["source"] == "product"
    assert body["action"] == "document.shared"
    assert body["occurred_at"].startswith("2026-01-15T08:30:00.123456")  # kept to the microsecond, in UTC
    assert body["actor"] == {"type": "user", "id": "user_42", "name": "Ada Lovelace"}
    assert body["targets"] == [
        {"type": "document", "id": "doc_7", "name": "Q3 plan"},
        {"type": "user", "id": "user_9", "name": None},
    ]
    assert (body["resource_type"], body["resource_id"]) == ("document", "doc_7")
    assert body["context"] == {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}
    assert body["metadata"] == {"permission": "edit", "count": 3, "ratio": 0.25, "notify": True, "note": None}
    (row,) = audit_rows(engine, id=body["id"])
    assert row["chain_key"] == org.id and row["seq"] == body["seq"] and row["hash"] == body["hash"]
    assert verify(client, org)["ok"] is True


def test_a_platform_key_names_a_live_org(
    client: httpx.Client, org: OrgWorld, other_org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    key = client.post("/v1/admin/ingest-keys", json={"name": "server"}, headers=auth(staff_admin[1])).json()[
        "token"
    ]
    created = client.post("/v1/audit-logs", json=entry(org_id=org.id), headers=auth(key))
    assert created.status_code == 201, created.text
    assert created.json()["organization_id"] == org.id

    assert (
        "must name the org_id"
        in assert_problem(client.post("/v1/audit-logs", json=entry(), headers=auth(key)), 403)["detail"]
    )
    assert_problem(
        client.post("/v1/audit-logs", json=entry(org_id=str(uuid.uuid4())), headers=auth(key)), 404
    )
    client.post(
        f"/v1/admin/orgs/{other_org.id}/suspend", json={"reason": "unpaid"}, headers=auth(staff_admin[1])
    )
    assert (
        "suspended"
        in assert_problem(
            client.post("/v1/audit-logs", json=entry(org_id=other_org.id), headers=auth(key)), 403
        )["detail"]
    )
    client.delete(f"/v1/orgs/{org.id}", headers=org.headers("owner"))
    assert_problem(client.post("/v1/audit-logs", json=entry(org_id=org.id), headers=auth(key)), 404)


def test_an_org_key_writes_only_to_its_own_org(
    client: httpx.Client, org: OrgWorld, other_org: OrgWorld
) -> None:
    response = client.post("/v1/audit-logs", json=entry(org_id=other_org.id), headers=auth(org.ingest_key))
    assert "only to its own organization" in assert_problem(response, 403)["detail"]
    # A user token is not an ingest key, whatever its role.
    assert (
        "ingest key"
        in assert_problem(client.post("/v1/audit-logs", json=entry(), headers=org.headers("owner")), 403)[
            "detail"
        ]
    )


def test_idempotency_key_replays_the_first_answer(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    headers = {**auth(org.ingest_key), "Idempotency-Key": f"evt-{uuid.uuid4()}"}
    first = client.post("/v1/audit-logs", json=entry(), headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # The same body, spelled differently (key order), is the same body.
    again = client.post("/v1/audit-logs", json=dict(reversed(list(entry().items()))), headers=headers)
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert len(audit_rows(engine, organization_id=org.id, action="document.shared")) == 1

    conflict = assert_problem(
        client.post("/v1/audit-logs", json=entry(action="document.deleted"), headers=headers), 409
    )
    assert conflict["errors"] == [{"field": "Idempotency-Key", "message": "reused with a different body"}]

    # Another org may use the same key: keys are per organization.
    assert len(audit_rows(engine, organization_id=org.id, action="document.shared")) == 1


def test_idempotency_key_is_honoured_for_24_hours_only(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    key = f"evt-{uuid.uuid4()}"
    headers = {**auth(org.ingest_key), "Idempotency-Key": key}
    first = client.post("/v1/audit-logs", json=entry(), headers=headers)
    with engine.begin() as conn:  # the first answer is now 25 hours old
        conn.execute(
            text("UPDATE audit_idempotency_keys SET created_at = :t WHERE organization_id = :o AND key = :k"),
            {"t": datetime.now(UTC) - timedelta(hours=25), "o": org.id, "k": key},
        )
    later = client.post("/v1/audit-logs", json=entry(action="document.deleted"), headers=headers)
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in later.headers


def test_the_retention_flow_forgets_expired_idempotency_keys(
    client: httpx.Client, engine: Engine, org: OrgWorld, database_url: str
) -> None:
    from pipelines.tasks.retention import purge_idempotency_keys

    old, fresh = f"evt-{uuid.uuid4()}", f"evt-{uuid.uuid4()}"
    for key in (old, fresh):
        client.post("/v1/audit-logs", json=entry(), headers={**auth(org.ingest_key), "Idempotency-Key": key})
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_idempotency_keys SET created_at = :t WHERE organization_id = :o AND key = :k"),
            {"t": datetime.now(UTC) - timedelta(hours=25), "o": org.id, "k": old},
        )
    assert purge_idempotency_keys(database_url) >= 1
    with engine.connect() as conn:
        kept = set(conn.execute(
            text("SELECT key FROM audit_idempotency_keys WHERE organization_id = :o"), {"o": org.id}).scalars())  # fmt: skip
    assert kept == {fresh}
    replay = client.post(
        "/v1/audit-logs", json=entry(), headers={**auth(org.ingest_key), "Idempotency-Key": fresh}
    )
    assert replay.headers["idempotent-replayed"] == "true"  # the live key still replays


def test_concurrent_requests_with_one_key_write_once(
    client: httpx.Client, engine: Engine, org: OrgWorld, live_server
) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    headers = {**auth(org.ingest_key), "Idempotency-Key": f"evt-{uuid.uuid4()}"}

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_server.url, timeout=30) as c:
            return c.post("/v1/audit-logs", json=entry(action="report.exported"), headers=headers)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(send, range(6)))
    assert {a.status_code for a in answers} == {201}
    assert len({a.content for a in answers}) == 1
    assert len(audit_rows(engine, organization_id=org.id, action="report.exported")) == 1


def _future(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata", "length <= 50"),
        ({"metadata": {"note": "x" * 501}}, "metadata.note", "at most 500 characters"),
        ({"metadata": {"k" * 41: "v"}}, "metadata." + "k" * 41, "1-40 characters"),
        ({"metadata": {"": "v"}}, "metadata.", "1-40 characters"),
        ({"metadata": {"nested": {"a": 1}}}, "metadata[...]", "got `object`"),
        ({"metadata": {"big": 1e16}}, "metadata.big", "below 1e16"),
        ({"metadata": {"huge": 2**64}}, "metadata.huge", "64 bits"),
        ({"occurred_at": "2026-01-15T10:30:00"}, "occurred_at", "timezone"),
        ({"occurred_at": "yesterday"}, "occurred_at", "datetime"),
        ({"occurred_at": _future(25)}, "occurred_at", "24 hours in the future"),
        ({"occurred_at": "1969-12-31T23:59:59Z"}, "occurred_at", "after 1970"),
        ({"actor": {"type": "robot", "id": "r2"}}, "actor.type", "Invalid enum value 'robot'"),
        ({"actor": {"type": "user"}}, "actor.id", "missing required field"),
        ({"action": "Document Shared"}, "action", "matching regex"),
        ({"action": "a" * 201}, "action", "matching regex"),
        ({"action": ""}, "action", "matching regex"),
        ({"context": {"ip": "300.1.1.1"}}, "context.ip", "not an IPv4 or IPv6 address"),
        ({"context": {"ip": "fe80::1%eth0"}}, "context.ip", "zone"),
        ({"targets": [{"type": "document"}]}, "targets[0].id", "missing required field"),
        ({"actor": {"type": "user", "id": "u\u0000"}}, "actor.id", "NUL"),
        ({"metadata": {"note": "a\u0000b"}}, "metadata.note", "NUL"),
        ({"colour": "blue"}, "colour", "unknown field"),
    ],
)
def test_bad_entries_are_precise_422s(
    client: httpx.Client, engine: Engine, org: OrgWorld, overrides: dict[str, Any], field: str, says: str
) -> None:
    before = len(audit_rows(engine, organization_id=org.id))
    body = assert_problem(
        client.post("/v1/audit-logs", json=entry(**overrides), headers=auth(org.ingest_key)), 422, field
    )
    assert says in body["detail"], body
    assert len(audit_rows(engine, organization_id=org.id)) == before


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"actor": {"type": "staff", "id": "s1"}}, "actor.type", "for Keel's own entries"),
        ({"actor": {"type": "system", "id": "cron"}}, "actor.type", "one of user, api_key, stripe"),
        ({"action": "org.suspended"}, "action", "reserved for Keel"),
        ({"action": "staff.org_viewed"}, "action", "reserved for Keel"),
        ({"action": "staff.data_exported"}, "action", "`staff.*`"),
        ({"action": "keel.anything"}, "action", "`keel.*`"),
    ],
)
def test_product_entries_cannot_pass_for_keels_own(
    client: httpx.Client, engine: Engine, org: OrgWorld, overrides: dict[str, Any], field: str, says: str
) -> None:
    before = len(audit_rows(engine, organization_id=org.id))
    body = assert_problem(
        client.post("/v1/audit-logs", json=entry(**overrides), headers=auth(org.ingest_key)), 422, field
    )
    assert says in body["detail"], body
    assert len(audit_rows(engine, organization_id=org.id)) == before


def test_every_action_keel_documents_is_refused_and_the_products_own_pass(
    client: httpx.Client, org: OrgWorld
) -> None:
    accepted = [
        action
        for action in sorted(actions_in_doc())
        if client.post("/v1/audit-logs", json=entry(action=action), headers=auth(org.ingest_key)).status_code
        != 422
    ]
    assert accepted == []
    for action in ("billing.card_added", "member.exported_contacts", "keelhaul.done", "user.signed_in"):
        response = client.post("/v1/audit-logs", json=entry(action=action), headers=auth(org.ingest_key))
        assert response.status_code == 201, (action, response.text)


def test_bad_idempotency_keys_and_json(client: httpx.Client, org: OrgWorld) -> None:
    headers = {**auth(org.ingest_key), "Idempotency-Key": "x" * 256}
    assert_problem(client.post("/v1/audit-logs", json=entry(), headers=headers), 422)
    response = client.post(
        "/v1/audit-logs",
        content=b'{"action": ',
        headers={**auth(org.ingest_key), "content-type": "application/json"},
    )
    assert "not valid JSON" in assert_problem(response, 400)["detail"]


def test_values_that_postgres_stores_differently_still_verify(client: httpx.Client, org: OrgWorld) -> None:
    """JSONB numbers, unicode, IPv6 spellings and offsets: the hash is over what comes back."""
    tricky = [
        {"metadata": {"neg_zero": -0.0, "tiny": 1e-7, "big": 9.99e15, "int": 2**62, "pi": 3.141592653589793}},
        {"metadata": {"emoji": "😀 naïve café", "rtl": "שלום", "sep": "\u2028", "quote": '"\\'}},
        {"context": {"ip": "::ffff:1.2.3.4"}},
        {"context": {"ip": "2001:0DB8:0:0:1:0:0:1"}},
        {"occurred_at": "2026-01-15T23:59:59.999999-11:30"},
        {"occurred_at": "2026-01-15T10:30:00.1234567Z"},
        {"actor": {"type": "api_key", "id": "key_1"}, "targets": [], "context": None, "metadata": {}},
        {"actor": {"type": "stripe", "id": "evt_1", "name": "Stripe"}},
    ]
    for overrides in tricky:
        response = client.post("/v1/audit-logs", json=entry(**overrides), headers=auth(org.ingest_key))
        assert response.status_code == 201, (overrides, response.text)
    assert (
        client.post("/v1/audit-logs", json=entry(**tricky[0]), headers=auth(org.ingest_key)).json()[
            "metadata"
        ]["neg_zero"]
        == 0.0
    )
    report = verify(client, org)
    assert report["ok"] is True, report
    assert report["first_broken"] is None


# Schemathesis, with the credential the route is for: the owner and staff personas of
# test_fuzz_openapi.py only ever reach this route's 403.
ingest_operation = fuzz_schema.include(path="/v1/audit-logs", method="POST")


@pytest.fixture(scope="module")
def ingest_key_headers(live_server, engine: Engine) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url) as c:
        return auth(make_org(c, engine).ingest_key)


@ingest_operation.parametrize()
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_ingest_with_an_ingest_key(case, live_server, ingest_key_headers) -> None:  # type: ignore[no-untyped-def]
    # Rules a JSON schema cannot say (occurred_at within its window, a real IP, no NUL) answer 422
    # to some schema-valid bodies, so "valid data is accepted" does not apply; no 5xx still does.
    excluded = [*INJECTED_AUTH_CHECKS, checks.positive_data_acceptance]
    case.call_and_validate(base_url=live_server.url, headers=ingest_key_headers, excluded_checks=excluded)
