"""Publishable keys (``keel_pub_...``) and CORS on the browser routes, over real HTTP."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import Engine, text

from api.auth.services import BROWSER
from tests.harness import OrgWorld, audit_rows, auth, make_publishable_key, unique
from tests.test_audit_ingest import entry
from tests.test_bad_input import assert_problem

pytestmark = pytest.mark.api

WEB_APP = "https://app.acme.example"
ELSEWHERE = "https://evil.example"
#: Every route a publishable key may reach, and the only ones that answer CORS.
BROWSER_PATHS = {
    "/v1/events",
    "/v1/events/batch",
    "/v1/flags/evaluate",
    "/v1/flags/evaluate/{key:str}",
    "/ofrep/v1/evaluate/flags",
    "/ofrep/v1/evaluate/flags/{key:str}",
    *(f"/segment/v1/{call}" for call in ("batch", "track", "identify", "group", "page", "screen", "alias")),
    # The one-letter paths Segment's browser SDK (analytics.js) posts to, and its telemetry's
    # (`/m`: public, discarded).
    *(f"/segment/v1/{letter}" for letter in "btigpsam"),
}


def event(**overrides: Any) -> dict[str, Any]:
    return {"event": "report.exported", "user_id": "u-1", "message_id": str(uuid.uuid4()), **overrides}


def stored(engine: Engine, org_id: str, message_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM events WHERE organization_id = :o AND message_id = :m"),
            {"o": org_id, "m": message_id},
        ).scalar_one()


def browser_paths(app: Litestar) -> set[str]:
    return {
        route.path
        for route in app.routes
        if isinstance(route, HTTPRoute) and any(h.opt.get(BROWSER) for h in route.route_handlers)
    }


def test_the_browser_routes_are_exactly_the_event_and_flag_evaluation_routes(app: Litestar) -> None:
    assert browser_paths(app) == BROWSER_PATHS


def test_a_publishable_key_is_created_listed_audited_and_revoked(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    created = client.post(
        f"/v1/orgs/{org.id}/ingest-keys",
        json={"name": "web", "publishable": True, "allowed_origins": ["https://App.Acme.example/", WEB_APP]},
        headers=org.headers("admin"),
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["token"].startswith("keel_pub_") and key["prefix"].startswith("keel_pub_")
    assert key["publishable"] is True and key["allowed_origins"] == [WEB_APP]
    listed = client.get(f"/v1/orgs/{org.id}/ingest-keys", headers=org.headers("admin")).json()["items"]
    assert {(k["id"], k["publishable"]) for k in listed} == {(org.ingest_key_id, False), (key["id"], True)}
    (audited,) = audit_rows(engine, organization_id=org.id, action="publishable_key.created")
    assert audited["resource_id"] == key["id"] and audited["metadata"]["after"]["allowed_origins"] == [
        WEB_APP
    ]

    assert client.post("/v1/events", json=event(), headers=auth(key["token"])).status_code == 200
    revoked = client.delete(f"/v1/orgs/{org.id}/ingest-keys/{key['id']}", headers=org.headers("admin"))
    assert revoked.status_code == 204
    assert audit_rows(engine, organization_id=org.id, action="publishable_key.revoked")
    body = assert_problem(client.post("/v1/events", json=event(), headers=auth(key["token"])), 401)
    assert "revoked" in body["detail"]


@pytest.mark.parametrize(
    ("origins", "field"),
    [
        (["https://app.acme.example/path"], "allowed_origins[0]"),
        (["ftp://app.acme.example"], "allowed_origins[0]"),
        (["*"], "allowed_origins[0]"),
        ([WEB_APP, "app.acme.example"], "allowed_origins[1]"),
        ([f"https://a{i}.example" for i in range(51)], "allowed_origins"),
        ("https://app.acme.example", "allowed_origins"),
    ],
)
def test_bad_allowed_origins_are_named(client: httpx.Client, org: OrgWorld, origins: Any, field: str) -> None:
    response = client.post(
        f"/v1/orgs/{org.id}/ingest-keys",
        json={"name": "web", "publishable": True, "allowed_origins": origins},
        headers=org.headers("admin"),
    )
    assert_problem(response, 422, field)


def test_user_tokens_take_no_publishable_fields(client: httpx.Client, org: OrgWorld) -> None:
    response = client.post(
        "/v1/me/tokens", json={"name": "t", "publishable": True}, headers=org.headers("owner")
    )
    assert_problem(response, 422)


def test_only_admins_create_publishable_keys(client: httpx.Client, org: OrgWorld) -> None:
    response = client.post(
        f"/v1/orgs/{org.id}/ingest-keys",
        json={"name": "web", "publishable": True},
        headers=org.headers("member"),
    )
    assert_problem(response, 403)


@pytest.mark.parametrize("path", sorted(BROWSER_PATHS))
def test_a_preflight_is_answered_on_every_browser_route(client: httpx.Client, path: str) -> None:
    url = path.replace("{key:str}", "some-flag")
    response = client.options(
        url,
        headers={
            "Origin": WEB_APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, content-encoding, x-retry-count, "
            "if-none-match",
        },
    )
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == WEB_APP
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    # If-None-Match: the OFREP web provider's polls revalidate the bulk answer with its ETag.
    assert {"authorization", "content-type", "content-encoding", "x-retry-count", "if-none-match"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(
    "path", ["/v1/audit-logs", "/v1/me", "/v1/orgs", "/v1/admin/ingest-keys", "/v1/audit-logs/batch"]
)
def test_no_other_route_answers_cors(client: httpx.Client, org: OrgWorld, path: str) -> None:
    headers = {"Origin": WEB_APP, "Access-Control-Request-Method": "POST"}
    preflight = client.options(path, headers=headers)
    assert "access-control-allow-origin" not in preflight.headers
    assert (
        "access-control-allow-origin"
        not in client.get(path, headers={**org.headers("owner"), "Origin": WEB_APP}).headers
    )


def test_a_publishable_key_sends_events_from_its_origin(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    key, _ = make_publishable_key(client, org, origins=[WEB_APP])
    body = event()
    response = client.post("/v1/events", json=body, headers={**auth(key), "Origin": WEB_APP})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == WEB_APP
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers
    assert stored(engine, org.id, body["message_id"]) == 1
    # Segment's write-key auth (Basic, the key as the user name), as its SDKs send it.
    basic = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    call = {"type": "track", "event": "Viewed", "userId": "u1", "messageId": str(uuid.uuid4())}
    segment = client.post("/segment/v1/track", json=call, headers={"Authorization": basic, "Origin": WEB_APP})
    assert segment.status_code == 200 and segment.json() == {"success": True}, segment.text
    assert segment.headers["access-control-allow-origin"] == WEB_APP
    assert stored(engine, org.id, call["messageId"]) == 1
    # And without an Origin (a server, a test script): the key is the same key.
    assert client.post("/v1/events/batch", json={"events": [event()]}, headers=auth(key)).status_code == 200


def test_a_publishable_key_from_another_origin_is_refused(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    key, _ = make_publishable_key(client, org, origins=[WEB_APP])
    body = event()
    response = client.post("/v1/events", json=body, headers={**auth(key), "Origin": ELSEWHERE})
    problem = assert_problem(response, 403)
    assert ELSEWHERE in problem["detail"]
    assert "access-control-allow-origin" not in response.headers
    assert stored(engine, org.id, body["message_id"]) == 0


def test_a_publishable_key_without_origins_is_accepted_from_any(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    key, _ = make_publishable_key(client, org)
    body = event()
    response = client.post("/v1/events", json=body, headers={**auth(key), "Origin": ELSEWHERE})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ELSEWHERE
    assert stored(engine, org.id, body["message_id"]) == 1


def test_a_publishable_key_reaches_nothing_but_events_and_flags(
    app: Litestar, client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    key, key_id = make_publishable_key(client, org)
    before = audit_rows(engine, organization_id=org.id)
    for route in app.routes:
        if (
            not isinstance(route, HTTPRoute)
            or route.path in BROWSER_PATHS
            or route.path.startswith("/schema")
        ):
            continue
        for handler in route.route_handlers:
            if handler.opt.get("public"):
                continue
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                url = route.path
                for name, value in {"org_id:uuid": org.id, "key_id:uuid": key_id}.items():
                    url = url.replace("{" + name + "}", value)
                url = "/".join(str(uuid.uuid4()) if part.startswith("{") else part for part in url.split("/"))
                body = {} if method in {"POST", "PUT", "PATCH"} else None
                response = client.request(method, url, json=body, headers=auth(key))
                if route.path.startswith("/console"):
                    # The console takes no bearer token at all: a sign-in redirect or 401/403.
                    assert response.status_code in {303, 401, 403}, (method, route.path, response.status_code)
                    continue
                assert response.status_code == 403, (method, route.path, response.status_code, response.text)
                assert "publishable key" in response.json()["detail"], (method, route.path)
    # Not one audit entry, above all none of its own.
    audit = client.post("/v1/audit-logs", json=entry(), headers=auth(key))
    assert_problem(audit, 403)
    assert audit_rows(engine, organization_id=org.id) == before
    # It still revokes cleanly, by the org's admins only.
    assert client.delete(f"/v1/orgs/{org.id}/ingest-keys/{key_id}", headers=auth(key)).status_code == 403


def test_a_publishable_key_evaluates_its_orgs_flags(client: httpx.Client, org: OrgWorld) -> None:
    key, _ = make_publishable_key(client, org, origins=[WEB_APP])
    every = client.get("/v1/flags/evaluate", headers={**auth(key), "Origin": WEB_APP})
    assert every.status_code == 200, every.text
    assert "flags" in every.json() and every.headers["access-control-allow-origin"] == WEB_APP
    ofrep = client.post(
        "/ofrep/v1/evaluate/flags", json={"context": {}}, headers={**auth(key), "Origin": WEB_APP}
    )
    assert ofrep.status_code == 200, ofrep.text
    assert ofrep.headers["access-control-allow-origin"] == WEB_APP
    # A page reads the ETag only when the answer exposes it (the OFREP web provider revalidates
    # with it), and the 304 it gets back is a CORS answer too.
    exposed = {h.strip().lower() for h in ofrep.headers["access-control-expose-headers"].split(",")}
    assert {"etag", "retry-after"} <= exposed
    again = client.post(
        "/ofrep/v1/evaluate/flags",
        json={"context": {}},
        headers={**auth(key), "Origin": WEB_APP, "If-None-Match": ofrep.headers["etag"]},
    )
    assert again.status_code == 304 and again.headers["access-control-allow-origin"] == WEB_APP
    assert "etag" in again.headers["access-control-expose-headers"].lower()


def test_a_platform_publishable_key_names_the_org(
    client: httpx.Client, engine: Engine, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    created = client.post(
        "/v1/admin/ingest-keys",
        json={"name": "web", "publishable": True, "allowed_origins": [WEB_APP]},
        headers=auth(staff_admin[1]),
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["token"].startswith("keel_pub_") and key["organization_id"] is None
    assert audit_rows(engine, action="platform_publishable_key.created", resource_id=key["id"])
    body = event(org_id=org.id)
    response = client.post("/v1/events", json=body, headers={**auth(key["token"]), "Origin": WEB_APP})
    assert response.status_code == 200, response.text
    assert stored(engine, org.id, body["message_id"]) == 1
    assert_problem(client.get("/v1/admin/ingest-keys", headers=auth(key["token"])), 403)
    assert_problem(client.post("/v1/audit-logs", json=entry(org_id=org.id), headers=auth(key["token"])), 403)


def test_a_secret_key_keeps_its_reach_but_not_from_a_browser(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    # Without an Origin (a server): events and audit entries, as ever.
    assert client.post("/v1/events", json=event(), headers=auth(org.ingest_key)).status_code == 200
    assert client.post("/v1/audit-logs", json=entry(), headers=auth(org.ingest_key)).status_code == 201
    # From a browser: refused, on the browser routes and off them.
    body = event()
    for path, sent in (("/v1/events", body), ("/v1/audit-logs", entry())):
        response = client.post(path, json=sent, headers={**auth(org.ingest_key), "Origin": WEB_APP})
        problem = assert_problem(response, 403)
        assert "secret ingest key" in problem["detail"]
        assert "access-control-allow-origin" not in response.headers
    assert stored(engine, org.id, body["message_id"]) == 0


def test_a_secret_key_may_list_the_origins_it_is_used_from(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    created = client.post(
        f"/v1/orgs/{org.id}/ingest-keys",
        json={"name": unique("internal"), "allowed_origins": [WEB_APP]},
        headers=org.headers("owner"),
    ).json()
    assert created["token"].startswith("keel_ik_") and created["publishable"] is False
    assert audit_rows(engine, organization_id=org.id, action="ingest_key.created", resource_id=created["id"])
    secret = created["token"]
    allowed = client.post("/v1/audit-logs", json=entry(), headers={**auth(secret), "Origin": WEB_APP})
    assert allowed.status_code == 201, allowed.text
    assert "access-control-allow-origin" not in allowed.headers  # audit routes never answer CORS
    assert_problem(
        client.post("/v1/events", json=event(), headers={**auth(secret), "Origin": ELSEWHERE}), 403
    )
