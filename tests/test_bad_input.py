"""Bad input for every endpoint family: a precise problem+json answer, never a 500, nothing half-written."""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.harness import OrgWorld, auth, expire_token, make_user


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    if field is not None:
        assert field in {e["field"] for e in body.get("errors", [])}, body
    return body


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "missing Authorization header"),
        ("Basic abc", "must be `Bearer <token>`"),
        ("Bearer", "must be `Bearer <token>`"),
        ("Bearer keel_ut_not-a-real-token", "invalid token"),
    ],
)
def test_missing_or_invalid_tokens_are_401(client: httpx.Client, header: str | None, detail: str) -> None:
    headers = {"Authorization": header} if header is not None else {}
    body = assert_problem(client.get("/v1/me", headers=headers), 401)
    assert detail in body["detail"]


def test_expired_and_revoked_tokens_are_401(client: httpx.Client, engine: Engine) -> None:
    _, expiring = make_user(engine)
    expire_token(engine, expiring)
    assert "expired" in assert_problem(client.get("/v1/me", headers=auth(expiring)), 401)["detail"]

    _, token = make_user(engine)
    created = client.post("/v1/me/tokens", json={"name": "ci"}, headers=auth(token)).json()
    assert client.get("/v1/me", headers=auth(created["token"])).status_code == 200
    assert client.delete(f"/v1/me/tokens/{created['id']}", headers=auth(token)).status_code == 204
    assert "revoked" in assert_problem(client.get("/v1/me", headers=auth(created["token"])), 401)["detail"]


def test_malformed_json_is_400(client: httpx.Client, org: OrgWorld) -> None:
    for path in ("/v1/orgs", f"/v1/orgs/{org.id}/members", "/v1/me/tokens", f"/v1/orgs/{org.id}/ingest-keys"):
        response = client.post(
            path, content=b'{"name": ', headers={**org.headers("owner"), "content-type": "application/json"}
        )
        assert "not valid JSON" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Acme"}, "slug"),
        ({"name": "Acme", "slug": "Has Spaces"}, "slug"),
        ({"name": "Acme", "slug": "a"}, "slug"),
        ({"name": "x" * 201, "slug": "long-name"}, "name"),
        ({"name": "", "slug": "empty-name"}, "name"),
        ({"name": 42, "slug": "typed"}, "name"),
        ({"name": "Acme", "slug": "extra-field", "plan": "gold"}, "plan"),
    ],
)
def test_org_create_validation_names_the_field(
    client: httpx.Client, engine: Engine, body: dict, field: str
) -> None:
    _, token = make_user(engine)
    assert_problem(client.post("/v1/orgs", json=body, headers=auth(token)), 422, field)
    assert client.get("/v1/orgs", headers=auth(token)).json()["items"] == []


def test_duplicate_slug_is_409_and_creates_nothing(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    user_id, token = make_user(engine)
    assert_problem(
        client.post("/v1/orgs", json={"name": "Copy", "slug": org.slug}, headers=auth(token)), 409, "slug"
    )
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM memberships WHERE user_id = :u"), {"u": user_id}
        ).scalar()
    assert count == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"email": "not-an-email", "role": "member"}, 422, "email"),
        ({"email": "a@b", "role": "member"}, 422, "email"),
        ({"email": "new@test.example", "role": "superuser"}, 422, "role"),
        ({"email": "new@test.example"}, 422, "role"),
        ({"email": "x" * 400 + "@test.example", "role": "member"}, 422, "email"),
    ],
)
def test_member_invite_validation(
    client: httpx.Client, org: OrgWorld, body: dict, status: int, field: str
) -> None:
    assert_problem(
        client.post(f"/v1/orgs/{org.id}/members", json=body, headers=org.headers("owner")), status, field
    )


def test_member_conflicts_and_unknown_ids(client: httpx.Client, org: OrgWorld) -> None:
    email = client.get("/v1/me", headers=org.headers("member")).json()["email"]
    again = client.post(
        f"/v1/orgs/{org.id}/members",
        json={"email": email.upper(), "role": "viewer"},
        headers=org.headers("owner"),
    )
    assert_problem(again, 409, "email")
    ghost = uuid.uuid4()
    assert_problem(
        client.patch(
            f"/v1/orgs/{org.id}/members/{ghost}", json={"role": "viewer"}, headers=org.headers("owner")
        ),
        404,
    )
    assert_problem(client.delete(f"/v1/orgs/{org.id}/members/{ghost}", headers=org.headers("owner")), 404)
    assert_problem(client.post(f"/v1/orgs/{org.id}/members/accept", headers=org.headers("member")), 404)


def test_token_and_key_validation(client: httpx.Client, org: OrgWorld) -> None:
    headers = org.headers("owner")
    assert_problem(client.post("/v1/me/tokens", json={"name": ""}, headers=headers), 422, "name")
    assert_problem(
        client.post("/v1/me/tokens", json={"name": "t", "expires_in_days": 0}, headers=headers),
        422,
        "expires_in_days",
    )
    assert_problem(client.post(f"/v1/orgs/{org.id}/ingest-keys", json={}, headers=headers), 422, "name")
    assert_problem(client.delete(f"/v1/me/tokens/{uuid.uuid4()}", headers=headers), 404)
    assert_problem(client.delete(f"/v1/orgs/{org.id}/ingest-keys/{uuid.uuid4()}", headers=headers), 404)
    # An ingest key is not a user token.
    assert_problem(
        client.post("/v1/orgs", json={"name": "K", "slug": "from-a-key"}, headers=auth(org.ingest_key)), 403
    )


def test_pagination_and_query_validation(
    client: httpx.Client, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    headers = org.headers("owner")
    assert_problem(client.get("/v1/orgs", params={"limit": 0}, headers=headers), 422, "limit")
    assert_problem(client.get("/v1/orgs", params={"limit": 201}, headers=headers), 422, "limit")
    assert_problem(client.get("/v1/orgs", params={"limit": "ten"}, headers=headers), 422, "limit")
    assert_problem(client.get("/v1/orgs", params={"cursor": "@@@"}, headers=headers), 422, "cursor")
    assert_problem(
        client.get("/v1/admin/orgs", params={"q": "x" * 201}, headers=auth(staff_admin[1])), 422, "q"
    )


def test_admin_bad_input(client: httpx.Client, org: OrgWorld, staff_admin: tuple[str, str]) -> None:
    headers = auth(staff_admin[1])
    assert_problem(client.post(f"/v1/admin/orgs/{org.id}/suspend", json={}, headers=headers), 422, "reason")
    # No body at all: the answer says a body is needed and names `reason` (not Litestar's "data").
    bodiless = assert_problem(client.post(f"/v1/admin/orgs/{org.id}/suspend", headers=headers), 400, "reason")
    assert bodiless["detail"] == "the request body is empty; a JSON body is required, with `reason`"
    assert "data" not in str(bodiless)
    assert client.get(f"/v1/orgs/{org.id}", headers=org.headers("viewer")).status_code == 200  # not suspended
    assert_problem(
        client.post(f"/v1/admin/orgs/{org.id}/suspend", json={"reason": "r" * 501}, headers=headers),
        422,
        "reason",
    )
    assert_problem(
        client.post(f"/v1/admin/orgs/{uuid.uuid4()}/suspend", json={"reason": "x"}, headers=headers), 404
    )
    assert_problem(client.get(f"/v1/admin/orgs/{uuid.uuid4()}", headers=headers), 404)
    assert_problem(
        client.put(
            f"/v1/admin/users/{uuid.uuid4()}/platform-role", json={"platform_role": None}, headers=headers
        ),
        404,
    )


def test_unknown_routes_methods_and_oversized_bodies(client: httpx.Client, org: OrgWorld) -> None:
    headers = org.headers("owner")
    assert_problem(client.get("/v1/nothing-here", headers=headers), 404)
    assert_problem(client.get("/v1/orgs/not-a-uuid", headers=headers), 404)
    assert_problem(client.put("/v1/orgs", headers=headers), 405)
    huge = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert_problem(
        client.post("/v1/me/tokens", content=huge, headers={**headers, "content-type": "application/json"}),
        413,
    )


def test_request_id_is_echoed_and_in_problems(client: httpx.Client) -> None:
    response = client.get("/v1/me", headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    assert response.json()["request_id"] == "trace-123"
    unsafe = client.get("/v1/me", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> dict:
    """The access log line of one request (written once the answer has been sent: wait for it)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("request_id") == request_id]
        if lines or time.monotonic() > deadline:
            (line,) = lines
            return line
        time.sleep(0.01)


def test_every_request_is_in_the_access_log_unknown_routes_too(
    client: httpx.Client, org: OrgWorld, caplog: pytest.LogCaptureFixture
) -> None:
    calls = {
        "GET /v1/nothing-here": (lambda h: client.get("/v1/nothing-here", headers=h), 404),
        "PUT /v1/orgs": (lambda h: client.put("/v1/orgs", headers=h), 405),
        "GET /v1/orgs/{id}": (lambda h: client.get(f"/v1/orgs/{org.id}", headers={**h, **org.headers("viewer")}), 200),
    }  # fmt: skip
    with caplog.at_level(logging.INFO, logger="keel.access"):
        for n, (name, (call, status)) in enumerate(calls.items()):
            request_id = f"access-{n}-{uuid.uuid4().hex}"
            response = call({"X-Request-ID": request_id})
            assert response.status_code == status, name
            assert response.headers["x-request-id"] == request_id, name
            line = access_line(caplog, request_id)
            assert line["status"] == status and line["method"] == name.split()[0], name
            assert line["path"] == response.request.url.path and line["duration_ms"] >= 0, name
    assert line["org_id"] == org.id  # a route with an organization still names it


def test_a_nul_character_in_text_is_422_and_changes_nothing(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    """Postgres text cannot hold NUL: the driver refuses it before sending; the caller gets a 422."""
    _, token = make_user(engine)
    body = assert_problem(
        client.post("/v1/orgs", json={"name": "Nul\u0000Corp", "slug": "nul-corp"}, headers=auth(token)), 422
    )
    assert "NUL" in body["detail"]
    assert client.get("/v1/orgs", headers=auth(token)).json()["items"] == []
    renamed = client.patch(f"/v1/orgs/{org.id}", json={"name": "a\u0000b"}, headers=org.headers("owner"))
    assert_problem(renamed, 422)
    assert client.get(f"/v1/orgs/{org.id}", headers=org.headers("owner")).json()["name"] == f"Org {org.slug}"
    key = client.post(
        f"/v1/orgs/{org.id}/ingest-keys", json={"name": "k\u0000"}, headers=org.headers("owner")
    )
    assert_problem(key, 422)
