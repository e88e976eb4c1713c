"""Tenant isolation, enumerated from the app's own routes: a route added later is covered as it is.

Every route whose path names an organization (or another tenant-owned id) is called with the
credentials of another organization; each must answer 404 and change nothing. Routes that take
the organization as the ``org_id`` query parameter instead (flag evaluation) get the victim's id
there, so they are held to the same rule.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import Engine, text

from tests.harness import OrgWorld, auth, make_publishable_key

PARAM = re.compile(r"{(?P<name>\w+)(?::\w+)?}")
STAFF_ONLY = "/v1/admin/"
#: The staff console: no tenant credential opens it (tested below); its staff rules are enumerated
#: in test_safety_nets.py.
CONSOLE = "/console/"
SKIP_PREFIXES = ("/schema", CONSOLE)


def tenant_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path template) for every route with a path parameter, outside the staff area (the
    API's and the console's)."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not PARAM.search(route.path):
            continue
        if route.path.startswith(STAFF_ONLY) or route.path.startswith(SKIP_PREFIXES):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((method, route.path))
    return found


def victim_values(client: httpx.Client, victim: OrgWorld) -> dict[str, str]:
    """A real id of the victim organization for each path parameter a tenant route may carry."""
    tokens = client.get("/v1/me/tokens", headers=victim.headers("owner")).json()["items"]
    owner = victim.headers("owner")
    endpoint = client.post(
        f"/v1/orgs/{victim.id}/webhook-endpoints",
        json={"url": "https://hooks.example.com/victim"},
        headers=owner,
    ).json()
    client.post(
        f"/v1/orgs/{victim.id}/webhook-messages",
        json={"event_type": "victim.event", "payload": {}},
        headers=owner,
    )
    delivery = client.get(f"/v1/orgs/{victim.id}/webhook-deliveries", headers=owner).json()["items"][0]
    stream = client.post(
        f"/v1/orgs/{victim.id}/audit-streams",
        json={
            "name": "victim",
            "type": "splunk_hec",
            "url": "https://splunk.example.com:8088",
            "token": "victim-hec",
        },
        headers=owner,
    ).json()
    return {
        "org_id": victim.id,
        "user_id": victim.user_ids["member"],
        "key_id": victim.ingest_key_id,
        "token_id": tokens[0]["id"],
        # Flags are platform-wide; what a flag route must hide is the org named in its query.
        "key": "isolation-check",
        "endpoint_id": endpoint["id"],
        "delivery_id": delivery["id"],
        "stream_id": stream["id"],
        "event_id": str(uuid.uuid4()),  # inbound events belong to no tenant
        "secret": "keel_cl_not-a-link",
    }


def fill(path: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        assert name in values, f"test_isolation has no victim value for `{{{name}}}` in {path}: add one"
        return values[name]

    return PARAM.sub(replace, path)


def snapshot(engine: Engine, org_id: str) -> tuple:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT name, slug, status, deleted_at FROM organizations WHERE id = :i"), {"i": org_id}).one(),
            tuple(conn.execute(text("SELECT user_id, role, status FROM memberships WHERE organization_id = :i ORDER BY id"), {"i": org_id}).all()),
            tuple(conn.execute(text("SELECT id, revoked_at FROM api_tokens WHERE organization_id = :i ORDER BY id"), {"i": org_id}).all()),
            tuple(conn.execute(text("SELECT id, url, secret, enabled, deleted_at FROM webhook_endpoints WHERE organization_id = :i ORDER BY id"), {"i": org_id}).all()),
            tuple(conn.execute(text("SELECT id, status, next_attempt_at FROM webhook_deliveries WHERE organization_id = :i ORDER BY id"), {"i": org_id}).all()),
            conn.execute(text("SELECT count(*) FROM webhook_messages WHERE organization_id = :i"), {"i": org_id}).scalar(),
            tuple(conn.execute(text("SELECT id, name, url, status, token_ciphertext, updated_at FROM audit_streams WHERE organization_id = :i ORDER BY id"), {"i": org_id}).all()),
        )  # fmt: skip


def strip(problem: dict) -> dict:
    return {k: v for k, v in problem.items() if k not in {"instance", "request_id"}}


def test_routes_are_enumerated(app: Litestar) -> None:
    # Guard against the enumeration silently finding nothing.
    paths = {path for _, path in tenant_routes(app)}
    assert "/v1/orgs/{org_id:uuid}" in paths
    assert "/v1/orgs/{org_id:uuid}/members/{user_id:uuid}" in paths


@pytest.mark.parametrize("credential", ["other owner", "other ingest key", "other publishable key"])
def test_every_tenant_route_hides_other_orgs(
    app: Litestar, client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, credential: str
) -> None:
    victim, attacker = org, other_org
    values = victim_values(client, victim)
    secret = {
        "other owner": attacker.tokens["owner"],
        "other ingest key": attacker.ingest_key,
        "other publishable key": make_publishable_key(client, attacker)[0],
    }[credential]
    headers = auth(secret)
    before = snapshot(engine, victim.id)
    checked = []
    for method, template in tenant_routes(app):
        url = fill(template, values)
        body = {} if method in {"POST", "PUT", "PATCH"} else None
        response = client.request(method, url, headers=headers, json=body, params={"org_id": victim.id})
        # Org routes answer 404; routes of another tenant-owned id may refuse the credential itself
        # (403), and so does every route but events and flag evaluation a publishable key (the same
        # answer for the victim's ids as for ids that do not exist: checked below).
        expected = {404} if "{org_id" in template and credential != "other publishable key" else {403, 404}
        assert response.status_code in expected, (
            f"{method} {template} answered {response.status_code}: {response.text}"
        )
        assert response.headers["content-type"].startswith("application/problem+json")
        # Indistinguishable from ids that do not exist at all.
        ghosts = {name: str(uuid.uuid4()) for name in values}
        ghost = client.request(
            method, fill(template, ghosts), headers=headers, json=body, params={"org_id": ghosts["org_id"]}
        )
        assert strip(response.json()) == strip(ghost.json()), f"{method} {template} leaks existence"
        checked.append((method, template))
    assert len(checked) >= 10
    assert snapshot(engine, victim.id) == before


def console_routes(app: Litestar) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith(CONSOLE):
            continue
        for handler in route.route_handlers:
            if handler.opt.get("public") or "OPTIONS" in handler.http_methods:
                continue
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((method, route.path))
    return found


def test_no_tenant_credential_opens_the_console(
    app: Litestar, client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld
) -> None:
    """The console takes no bearer token: an org owner's (even the victim's own) and an ingest key
    are sent to sign in (GET) or refused (401) on every console route, and nothing changes."""
    values = victim_values(client, org)
    before = snapshot(engine, org.id)
    routes = console_routes(app)
    assert ("POST", "/console/orgs/{org_id:uuid}/suspend") in routes
    for token in (org.tokens["owner"], other_org.tokens["owner"], org.ingest_key):
        for method, template in routes:
            url = fill(template, values)
            data = {"reason": "tenant", "confirm": "yes"} if method == "POST" else None
            response = client.request(method, url, headers=auth(token), data=data, follow_redirects=False)
            if method == "GET":
                assert response.status_code == 303, f"{method} {template}: {response.status_code}"
                assert response.headers["location"] == "/console/login"
            else:
                assert response.status_code == 401, f"{method} {template}: {response.status_code}"
                assert response.headers["content-type"].startswith("application/problem+json")
    assert snapshot(engine, org.id) == before
