"""Platform (staff) roles are separate from org roles; suspension stops an org's keys and members."""

from __future__ import annotations

import httpx
from sqlalchemy import Engine

from tests.harness import OrgWorld, audit_rows, auth, make_user


def test_staff_without_membership_gets_404_on_org_routes(
    client: httpx.Client, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    _, token = staff_admin
    assert client.get(f"/v1/orgs/{org.id}", headers=auth(token)).status_code == 404
    assert client.get(f"/v1/orgs/{org.id}/members", headers=auth(token)).status_code == 404
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=auth(token))
    assert view.status_code == 200
    body = view.json()
    assert body["slug"] == org.slug
    assert sorted(m["role"] for m in body["members"]["items"]) == [
        "admin",
        "billing",
        "member",
        "owner",
        "viewer",
    ]
    assert body["active_ingest_keys"] == 1


def test_org_roles_grant_nothing_in_the_admin_area(client: httpx.Client, org: OrgWorld) -> None:
    for path in ("/v1/admin/orgs", f"/v1/admin/orgs/{org.id}", "/v1/admin/ingest-keys"):
        response = client.get(path, headers=org.headers("owner"))
        assert response.status_code == 403, path
        assert response.json()["detail"] == "this route is for platform staff"


def test_staff_reads_are_audited_as_staff(
    client: httpx.Client, engine: Engine, org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    user_id, token = staff_support
    response = client.get(
        f"/v1/admin/orgs/{org.id}", headers={**auth(token), "User-Agent": "support-console/1.0"}
    )
    assert response.status_code == 200
    rows = audit_rows(engine, organization_id=org.id, action="staff.org_viewed")
    assert len(rows) == 1
    assert rows[0]["actor_type"] == "staff" and rows[0]["actor_id"] == user_id
    assert rows[0]["user_agent"] == "support-console/1.0"
    assert rows[0]["ip"] is not None and rows[0]["request_id"] == response.headers["x-request-id"]


def test_support_reads_but_does_not_administer(
    client: httpx.Client, engine: Engine, org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    _, token = staff_support
    assert client.get("/v1/admin/orgs", params={"q": org.slug}, headers=auth(token)).status_code == 200
    assert client.get("/v1/admin/ingest-keys", headers=auth(token)).status_code == 200
    refused = [
        client.post(f"/v1/admin/orgs/{org.id}/suspend", json={"reason": "x"}, headers=auth(token)),
        client.post(f"/v1/admin/orgs/{org.id}/unsuspend", headers=auth(token)),
        client.post("/v1/admin/ingest-keys", json={"name": "k"}, headers=auth(token)),
        client.put(f"/v1/admin/users/{org.user_ids['viewer']}/platform-role", json={"platform_role": "admin"}, headers=auth(token)),
    ]  # fmt: skip
    assert [r.status_code for r in refused] == [403, 403, 403, 403]


def test_admin_search_finds_by_name_slug_and_member_email(
    client: httpx.Client, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    _, token = staff_admin
    email = client.get("/v1/me", headers=org.headers("billing")).json()["email"]
    for q in (org.slug, f"Org {org.slug}".upper(), email):
        items = client.get("/v1/admin/orgs", params={"q": q}, headers=auth(token)).json()["items"]
        assert [i["id"] for i in items] == [org.id], q
        assert items[0]["active_members"] == 5
    # LIKE wildcards are taken literally: as wildcards these would find this org (other tests' orgs
    # may well have a literal `%` or `_` in their names, so a bare "%" would prove nothing here).
    for wild in (f"{org.slug[:3]}%{org.slug[-3:]}", f"{org.slug[:-1]}_"):
        found = client.get("/v1/admin/orgs", params={"q": wild}, headers=auth(token)).json()["items"]
        assert org.id not in [i["id"] for i in found], wild


def test_suspension_stops_members_and_keys_until_lifted(
    client: httpx.Client, engine: Engine, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    _, token = staff_admin
    suspended = client.post(
        f"/v1/admin/orgs/{org.id}/suspend", json={"reason": "unpaid"}, headers=auth(token)
    )
    assert suspended.status_code == 201
    assert suspended.json() == {"id": org.id, "status": "suspended", "suspended_reason": "unpaid"}
    for role in ("owner", "viewer"):
        response = client.get(f"/v1/orgs/{org.id}", headers=org.headers(role))
        assert response.status_code == 403
        assert "suspended" in response.json()["detail"]
    key = client.get("/v1/me", headers=auth(org.ingest_key))
    assert key.status_code == 403 and "suspended" in key.json()["detail"]
    assert client.post(f"/v1/admin/orgs/{org.id}/unsuspend", headers=auth(token)).status_code == 201
    assert client.get(f"/v1/orgs/{org.id}", headers=org.headers("viewer")).status_code == 200
    assert client.get("/v1/me", headers=auth(org.ingest_key)).status_code == 200
    actions = [r["action"] for r in audit_rows(engine, organization_id=org.id)]
    assert actions.count("org.suspended") == 1 and actions.count("org.unsuspended") == 1


def test_platform_roles_are_granted_by_admins_and_one_admin_remains(
    client: httpx.Client, engine: Engine, staff_admin: tuple[str, str]
) -> None:
    admin_id, admin_token = staff_admin
    user_id, user_token = make_user(engine)
    granted = client.put(
        f"/v1/admin/users/{user_id}/platform-role",
        json={"platform_role": "support"},
        headers=auth(admin_token),
    )
    assert granted.status_code == 200 and granted.json()["platform_role"] == "support"
    assert client.get("/v1/admin/orgs", headers=auth(user_token)).status_code == 200
    revoked = client.put(
        f"/v1/admin/users/{user_id}/platform-role", json={"platform_role": None}, headers=auth(admin_token)
    )
    assert revoked.json()["platform_role"] is None
    assert client.get("/v1/admin/orgs", headers=auth(user_token)).status_code == 403
    rows = audit_rows(engine, resource_id=user_id, action="user.platform_role_changed")
    assert [r["metadata"]["after"]["platform_role"] for r in rows] == ["support", None]
    assert (
        client.put(
            f"/v1/admin/users/{admin_id}/platform-role",
            json={"platform_role": "bogus"},
            headers=auth(admin_token),
        ).status_code
        == 422
    )


def test_platform_ingest_keys_are_listed_without_secrets(
    client: httpx.Client, staff_admin: tuple[str, str]
) -> None:
    _, token = staff_admin
    created = client.post("/v1/admin/ingest-keys", json={"name": "backend"}, headers=auth(token))
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("keel_pk_") and created.json()["prefix"] == secret[:14]
    listed = client.get("/v1/admin/ingest-keys", headers=auth(token), params={"limit": 200}).json()["items"]
    assert created.json()["id"] in {k["id"] for k in listed}
    assert secret not in str(listed)
    assert (
        client.delete(f"/v1/admin/ingest-keys/{created.json()['id']}", headers=auth(token)).status_code == 204
    )
    assert client.get("/v1/me", headers=auth(secret)).status_code == 401
