"""Reading the audit log: filters, newest first, cursors that hold while entries are added, roles, staff."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.harness import OrgWorld, audit_rows, auth
from tests.test_audit_ingest import entry
from tests.test_bad_input import assert_problem


def post(client: httpx.Client, org: OrgWorld, **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/audit-logs", json=entry(**overrides), headers=auth(org.ingest_key))
    assert response.status_code == 201, response.text
    return response.json()


def listing(client: httpx.Client, org: OrgWorld, role: str = "owner", **params: Any) -> dict[str, Any]:
    response = client.get(f"/v1/orgs/{org.id}/audit-logs", params=params, headers=org.headers(role))
    assert response.status_code == 200, response.text
    return response.json()


def walk(client: httpx.Client, url: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        page = client.get(
            url, params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers
        ).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_filters(client: httpx.Client, org: OrgWorld) -> None:
    post(client, org, action="document.shared", actor={"type": "user", "id": "u1"})
    post(client, org, action="document.deleted", actor={"type": "user", "id": "u2"},
         targets=[{"type": "document", "id": "d2"}], occurred_at="2026-02-01T00:00:00Z")  # fmt: skip
    post(client, org, action="billing.card_added", actor={"type": "api_key", "id": "k1"},
         targets=[{"type": "card", "id": "c1"}], occurred_at="2026-03-01T00:00:00Z")  # fmt: skip

    def actions(**params: Any) -> list[str]:
        return [e["action"] for e in listing(client, org, **params)["items"]]

    assert actions(action="document.deleted") == ["document.deleted"]
    assert actions(action="document.*") == ["document.deleted", "document.shared"]  # newest first
    members = actions(action="member.*")
    assert members and all(a.startswith("member.") for a in members)
    assert actions(actor_type="api_key") == ["billing.card_added"]
    assert actions(actor_id="u2") == ["document.deleted"]
    assert actions(resource_type="document", resource_id="d2") == ["document.deleted"]
    assert actions(resource_type="card") == ["billing.card_added"]
    assert actions(since="2026-02-01T00:00:00Z", until="2026-03-01T00:00:00Z") == ["document.deleted"]
    assert actions(since="2026-02-01T01:00:00+01:00", action="document.*") == ["document.deleted"]
    assert actions(action="document_x.*") == []  # `_` is not a wildcard
    assert actions(since="2026-03-01T00:00:00Z", until="2026-02-01T00:00:00Z") == []  # an empty window
    assert "billing.card_added" in actions(since="0001-01-01T00:00:00-20:06")  # far-off offsets are fine
    keel_entries = listing(client, org, action="org.created")["items"]
    assert keel_entries[0]["source"] == "keel" and keel_entries[0]["actor"]["id"] == org.user_ids["owner"]


def test_pages_hold_while_entries_are_added(client: httpx.Client, org: OrgWorld) -> None:
    for i in range(7):
        post(client, org, action="page.test", metadata={"i": i})
    url, headers = f"/v1/orgs/{org.id}/audit-logs", org.headers("admin")
    first = client.get(url, params={"action": "page.test", "limit": 3}, headers=headers).json()
    seen = first["items"]
    cursor = first["next_cursor"]
    added = 0
    while cursor:
        post(client, org, action="page.test", metadata={"i": 100 + added})  # lands before page one
        added += 1
        page = client.get(
            url, params={"action": "page.test", "limit": 3, "cursor": cursor}, headers=headers
        ).json()
        seen += page["items"]
        cursor = page["next_cursor"]
    assert [e["metadata"]["i"] for e in seen] == [6, 5, 4, 3, 2, 1, 0]
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    fresh = walk(client, url, headers, action="page.test", limit=2)
    assert len(fresh) == 7 + added


@pytest.mark.parametrize("role", ["billing", "member", "viewer"])
def test_only_owners_and_admins_read_the_log(client: httpx.Client, org: OrgWorld, role: str) -> None:
    for path in ("", "/verify", "/export"):
        body = assert_problem(
            client.get(f"/v1/orgs/{org.id}/audit-logs{path}", headers=org.headers(role)), 403
        )
        assert "read audit" in body["detail"]
    assert listing(client, org, "admin")["items"]


def test_an_ingest_key_cannot_read_the_log(client: httpx.Client, org: OrgWorld) -> None:
    assert_problem(client.get(f"/v1/orgs/{org.id}/audit-logs", headers=auth(org.ingest_key)), 404)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"action": "Member.*"}, "action"),
        ({"action": "member*"}, "action"),
        ({"actor_type": "robot"}, "actor_type"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"resource_id": "x" * 256}, "resource_id"),
    ],
)
def test_bad_queries_are_precise_422s(
    client: httpx.Client, org: OrgWorld, params: dict[str, Any], field: str
) -> None:
    response = client.get(f"/v1/orgs/{org.id}/audit-logs", params=params, headers=org.headers("owner"))
    assert_problem(response, 422, field)


def test_staff_read_across_orgs_and_the_read_is_audited(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    staff_id, token = staff_support
    post(client, org, action="cross.org", actor={"type": "user", "id": "alice"})
    post(client, other_org, action="cross.org", actor={"type": "user", "id": "alice"})
    page = client.get("/v1/admin/audit-logs", params={"action": "cross.org", "actor_id": "alice", "limit": 200},
                      headers=auth(token)).json()  # fmt: skip
    orgs = {e["organization_id"] for e in page["items"]}
    assert {org.id, other_org.id} <= orgs
    for world in (org, other_org):
        (viewed,) = audit_rows(engine, organization_id=world.id, action="staff.audit_viewed")
        assert viewed["actor_type"] == "staff" and viewed["actor_id"] == staff_id
        assert viewed["metadata"]["filters"] == {"action": "cross.org", "actor_id": "alice"}
        assert viewed["ip"] is not None

    one = walk(client, "/v1/admin/audit-logs", auth(token), org_id=org.id, limit=2)
    assert {e["organization_id"] for e in one} == {org.id}
    ids = [e["id"] for e in one]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    # The org's owner sees that staff looked.
    seen = listing(client, org, action="staff.audit_viewed")["items"]
    assert seen and seen[0]["actor"]["type"] == "staff"


def test_admin_audit_log_is_for_staff_only(
    client: httpx.Client, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    assert_problem(client.get("/v1/admin/audit-logs", headers=org.headers("owner")), 403)
    assert_problem(client.get("/v1/admin/audit-logs", headers=auth(org.ingest_key)), 403)
    import uuid

    assert_problem(
        client.get(
            "/v1/admin/audit-logs", params={"org_id": str(uuid.uuid4())}, headers=auth(staff_admin[1])
        ),
        404,
    )
