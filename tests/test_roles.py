"""The org-role matrix of the architecture page (section 4), every role x every permission, over HTTP.

The expectations are written out here from the page, not imported from the code under test.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import Engine

from tests.harness import ROLES, OrgWorld, make_org, make_user, unique
from tests.test_migrations import fullwidth

ALL = set(ROLES)
MANAGERS = {"owner", "admin"}


def _extra_member(client: httpx.Client, engine: Engine, world: OrgWorld, role: str = "member") -> str:
    user_id, token = make_user(engine)
    email = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["email"]
    assert (
        client.post(
            f"/v1/orgs/{world.id}/members",
            json={"email": email, "role": role},
            headers=world.headers("owner"),
        ).status_code
        == 201
    )
    return user_id


Action = Callable[[httpx.Client, Engine, OrgWorld, str], httpx.Response]

ACTIONS: dict[str, tuple[Action, set[str], int]] = {
    "read org": (lambda c, e, w, r: c.get(f"/v1/orgs/{w.id}", headers=w.headers(r)), ALL, 200),
    "list members": (lambda c, e, w, r: c.get(f"/v1/orgs/{w.id}/members", headers=w.headers(r)), ALL, 200),
    "update org": (
        lambda c, e, w, r: c.patch(f"/v1/orgs/{w.id}", json={"name": "Renamed"}, headers=w.headers(r)),
        MANAGERS,
        200,
    ),
    "invite a member": (
        lambda c, e, w, r: c.post(
            f"/v1/orgs/{w.id}/members",
            json={"email": f"{unique('new')}@test.example", "role": "member"},
            headers=w.headers(r),
        ),
        MANAGERS,
        201,
    ),
    "change a member's role": (
        lambda c, e, w, r: c.patch(
            f"/v1/orgs/{w.id}/members/{_extra_member(c, e, w)}", json={"role": "viewer"}, headers=w.headers(r)
        ),
        MANAGERS,
        200,
    ),
    "remove a member": (
        lambda c, e, w, r: c.delete(
            f"/v1/orgs/{w.id}/members/{_extra_member(c, e, w)}", headers=w.headers(r)
        ),
        MANAGERS,
        204,
    ),
    "list ingest keys": (
        lambda c, e, w, r: c.get(f"/v1/orgs/{w.id}/ingest-keys", headers=w.headers(r)),
        MANAGERS,
        200,
    ),
    "create an ingest key": (
        lambda c, e, w, r: c.post(f"/v1/orgs/{w.id}/ingest-keys", json={"name": "k"}, headers=w.headers(r)),
        MANAGERS,
        201,
    ),
    "revoke an ingest key": (
        lambda c, e, w, r: c.delete(f"/v1/orgs/{w.id}/ingest-keys/{w.ingest_key_id}", headers=w.headers(r)),
        MANAGERS,
        204,
    ),
    "invite an owner": (
        lambda c, e, w, r: c.post(
            f"/v1/orgs/{w.id}/members",
            json={"email": f"{unique('own')}@test.example", "role": "owner"},
            headers=w.headers(r),
        ),
        {"owner"},
        201,
    ),
    "demote an owner": (
        lambda c, e, w, r: c.patch(
            f"/v1/orgs/{w.id}/members/{_extra_member(c, e, w, 'owner')}",
            json={"role": "member"},
            headers=w.headers(r),
        ),
        {"owner"},
        200,
    ),
    "remove an owner": (
        lambda c, e, w, r: c.delete(
            f"/v1/orgs/{w.id}/members/{_extra_member(c, e, w, 'owner')}", headers=w.headers(r)
        ),
        {"owner"},
        204,
    ),
    "delete the org": (lambda c, e, w, r: c.delete(f"/v1/orgs/{w.id}", headers=w.headers(r)), {"owner"}, 204),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(ACTIONS))
def test_role_matrix(client: httpx.Client, engine: Engine, role: str, action: str) -> None:
    world = make_org(client, engine)
    call, allowed, success = ACTIONS[action]
    response = call(client, engine, world, role)
    if role in allowed:
        assert response.status_code == success, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 403


def test_org_keeps_an_active_owner(client: httpx.Client, org: OrgWorld) -> None:
    owner = org.user_ids["owner"]
    demote = client.patch(
        f"/v1/orgs/{org.id}/members/{owner}", json={"role": "admin"}, headers=org.headers("owner")
    )
    assert demote.status_code == 409
    assert "owner" in demote.json()["detail"]
    leave = client.delete(f"/v1/orgs/{org.id}/members/{owner}", headers=org.headers("owner"))
    assert leave.status_code == 409
    # With a second owner, the first may step down.
    promote = client.patch(
        f"/v1/orgs/{org.id}/members/{org.user_ids['admin']}",
        json={"role": "owner"},
        headers=org.headers("owner"),
    )
    assert promote.status_code == 200
    assert (
        client.delete(f"/v1/orgs/{org.id}/members/{owner}", headers=org.headers("owner")).status_code == 204
    )
    assert client.get(f"/v1/orgs/{org.id}", headers=org.headers("owner")).status_code == 404


def test_any_member_may_leave(client: httpx.Client, org: OrgWorld) -> None:
    viewer = org.user_ids["viewer"]
    assert (
        client.delete(f"/v1/orgs/{org.id}/members/{viewer}", headers=org.headers("viewer")).status_code == 204
    )
    assert client.get(f"/v1/orgs/{org.id}", headers=org.headers("viewer")).status_code == 404
    members = client.get(f"/v1/orgs/{org.id}/members", headers=org.headers("owner")).json()["items"]
    assert viewer not in {m["user_id"] for m in members}


def test_invited_member_has_no_access_until_accepting(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    _, token = make_user(engine)
    email = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["email"]
    client.post(
        f"/v1/orgs/{org.id}/members", json={"email": email, "role": "admin"}, headers=org.headers("owner")
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/v1/orgs/{org.id}", headers=headers).status_code == 404
    me = client.get("/v1/me", headers=headers).json()
    assert me["memberships"] == [
        {
            "organization_id": org.id,
            "organization_name": f"Org {org.slug}",
            "role": "admin",
            "status": "invited",
        }
    ]
    assert client.post(f"/v1/orgs/{org.id}/members/accept", headers=headers).status_code == 201
    assert client.get(f"/v1/orgs/{org.id}", headers=headers).json()["role"] == "admin"


def test_an_invite_to_a_lookalike_address_reaches_the_same_user(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    """Emails are NFKC-normalized before the case-insensitive comparison: the full-width spelling of
    an existing address is that user, and a new full-width address is stored as the plain one."""
    user_id, token = make_user(engine)
    email = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["email"]
    invited = client.post(
        f"/v1/orgs/{org.id}/members",
        json={"email": fullwidth(email.upper()).replace(fullwidth("@"), "@"), "role": "member"},
        headers=org.headers("owner"),
    )
    assert invited.status_code == 201, invited.text
    assert invited.json()["user_id"] == user_id and invited.json()["email"] == email
    fresh = f"{unique('wide')}@test.example"
    created = client.post(
        f"/v1/orgs/{org.id}/members",
        json={"email": fullwidth(fresh).replace(fullwidth("@"), "@"), "role": "viewer"},
        headers=org.headers("owner"),
    )
    assert created.status_code == 201 and created.json()["email"] == fresh
    again = client.post(
        f"/v1/orgs/{org.id}/members",
        json={"email": fresh.upper(), "role": "viewer"},
        headers=org.headers("owner"),
    )
    assert again.status_code == 409 and again.json()["errors"] == [
        {"field": "email", "message": "already a member"}
    ]
