"""Cross-cutting rules that used to rest on convention, each checked from the app itself.

- Every staff route (``/v1/admin/...`` and the console's ``/console/...``) is enumerated from the app's routes, as the org routes are
  in ``test_isolation.py``: a token without a platform role gets 403 on each, support gets 403 on
  each admin-only one, and the marker that says which is admin-only (``auth.staff_only``) is the
  only place the rule is written.
- The auth caches are cleared after the change that withdraws access has committed.
- An org request reads the caller's membership once (the guard's lookup serves the handler).
"""

from __future__ import annotations

import ast
import contextlib
import re
import uuid
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import Engine, event, text

from api.auth import cache
from api.auth import services as auth
from api.auth.models import PlatformRole
from api.auth.permissions import STAFF_PERMISSIONS, StaffPermission
from api.settings import Settings
from tests.console_support import console_session, email_of
from tests.harness import LiveServer, OrgWorld, make_publishable_key, make_user
from tests.harness import auth as bearer

ADMIN = "/v1/admin/"
CONSOLE = "/console"
PARAM = re.compile(r"{(?P<name>\w+)(?::(?P<kind>\w+))?}")
API_DIR = Path(__file__).resolve().parents[1] / "api"


def staff_routes(app: Litestar) -> list[tuple[str, str, StaffPermission]]:
    """(method, path template, permission) for every non-public ``/v1/admin/...`` route."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith(ADMIN):
            continue
        for handler in route.route_handlers:
            if handler.opt.get("public"):
                continue
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((method, route.path, auth.staff_permission(handler.opt)))
    return found


def ghost(path: str) -> str:
    """The template with ids that exist nowhere: the refusal must come before any lookup."""
    return PARAM.sub(lambda m: str(uuid.uuid4()) if m.group("kind") == "uuid" else "ghost-key", path)


def call(client: httpx.Client, method: str, template: str, token: str) -> httpx.Response:
    body = {} if method in {"POST", "PUT", "PATCH"} else None
    return client.request(method, ghost(template), headers=bearer(token), json=body)


def test_staff_routes_are_enumerated_and_each_declares_its_permission(app: Litestar) -> None:
    routes = staff_routes(app)
    paths = {path for _, path, _ in routes}
    assert "/v1/admin/orgs" in paths and "/v1/admin/users/{user_id:uuid}/platform-role" in paths
    assert len(routes) >= 20
    admin_only = {(m, p) for m, p, perm in routes if perm not in STAFF_PERMISSIONS[PlatformRole.support]}
    assert ("PUT", "/v1/admin/users/{user_id:uuid}/platform-role") in admin_only
    assert ("GET", "/v1/admin/orgs") not in admin_only
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path.startswith(ADMIN):
            for handler in route.route_handlers:
                if "OPTIONS" in handler.http_methods or handler.opt.get("public"):
                    continue
                # An explicit marker on each: none relies on the strict default by accident.
                assert auth.STAFF_PERMISSION in handler.opt, (
                    f"{route.path} has no auth.staff_only(...) option"
                )


def test_the_marker_is_the_only_staff_check() -> None:
    # The hook enforces the marker; a handler checking again by hand could disagree with it.
    calls = []
    for path in API_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "require_staff"
            ):
                calls.append(f"{path.relative_to(API_DIR.parent)}:{node.lineno}")
    assert len(calls) == 1 and calls[0].startswith("api/deps.py:"), calls


@pytest.mark.parametrize("who", ["no platform role", "org owner", "ingest key", "publishable key"])
def test_every_staff_route_refuses_non_staff(
    app: Litestar, client: httpx.Client, engine: Engine, org: OrgWorld, who: str
) -> None:
    token = {
        "no platform role": make_user(engine)[1],
        "org owner": org.tokens["owner"],
        "ingest key": org.ingest_key,
        "publishable key": make_publishable_key(client, org)[0],
    }[who]
    routes = staff_routes(app)
    for method, template, _ in routes:
        response = call(client, method, template, token)
        assert response.status_code == 403, (
            f"{method} {template} answered {response.status_code}: {response.text}"
        )
        assert response.headers["content-type"].startswith("application/problem+json")


def test_support_is_refused_exactly_the_admin_only_routes(
    app: Litestar, client: httpx.Client, staff_support: tuple[str, str]
) -> None:
    support = STAFF_PERMISSIONS[PlatformRole.support]
    refused, allowed = [], []
    for method, template, permission in staff_routes(app):
        response = call(client, method, template, staff_support[1])
        (refused if response.status_code == 403 else allowed).append((method, template))
        if permission not in support:
            assert response.status_code == 403, f"{method} {template} answered {response.status_code}"
            assert "may not do this" in response.json()["detail"]
        else:
            assert response.status_code != 403, f"{method} {template} refused support: {response.text}"
    assert refused and allowed


def test_auth_caches_are_cleared_after_the_commit(
    client: httpx.Client, engine: Engine, org: OrgWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    member = org.user_ids["member"]
    seen: list[str] = []

    def spy() -> None:
        # What another request would read at the moment the caches empty.
        with engine.connect() as conn:
            seen.append(
                conn.execute(
                    text("SELECT status FROM memberships WHERE organization_id = :o AND user_id = :u"),
                    {"o": org.id, "u": member},
                ).scalar_one()
            )
        cache.principals.clear()
        cache.memberships.clear()

    monkeypatch.setattr(cache, "invalidate", spy)
    assert client.get(f"/v1/orgs/{org.id}", headers=org.headers("member")).status_code == 200
    removed = client.delete(f"/v1/orgs/{org.id}/members/{member}", headers=org.headers("owner"))
    assert removed.status_code == 204, removed.text
    assert seen == ["removed"]
    # A refused change clears nothing.
    refused = client.delete(
        f"/v1/orgs/{org.id}/members/{org.user_ids['owner']}", headers=org.headers("owner")
    )
    assert refused.status_code == 409, refused.text
    assert seen == ["removed"]
    assert client.get(f"/v1/orgs/{org.id}", headers=org.headers("member")).status_code == 404


def test_an_org_request_reads_the_membership_once(app: Litestar, client: httpx.Client, org: OrgWorld) -> None:
    """The guard reads the membership (outside any transaction, through the reader) and the
    handler reuses what it found; a grant just read is cached, so the next request reads none."""
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    def memberships_read() -> list[str]:
        return [s for s in statements if "FROM memberships" in s or "JOIN memberships" in s]

    sync_engine = app.state.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", record)
    app.state.reader.observers.append(statements.append)
    try:
        for role in ("viewer", "owner"):
            cache.invalidate()
            statements.clear()
            response = client.get(f"/v1/orgs/{org.id}", headers=org.headers(role))
            assert response.status_code == 200, response.text
            assert len(memberships_read()) == 1, statements
            statements.clear()
            again = client.get(f"/v1/orgs/{org.id}/members", headers=org.headers(role))
            assert again.status_code == 200, again.text
            assert len(memberships_read()) <= 1, statements  # none while the grant is cached
        cache.invalidate()
        statements.clear()
        refused = client.patch(f"/v1/orgs/{org.id}", json={"name": "Renamed"}, headers=org.headers("viewer"))
        assert refused.status_code == 403
        assert len([s for s in statements if "memberships" in s]) == 1
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)
        app.state.reader.observers.remove(statements.append)


def console_routes(app: Litestar) -> list[tuple[str, str, StaffPermission]]:
    """(method, path template, permission) for every console route that needs a session; sign-out
    comes last (it ends the session the enumeration uses)."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith(CONSOLE):
            continue
        for handler in route.route_handlers:
            if handler.opt.get("public") or "OPTIONS" in handler.http_methods:
                continue
            # An explicit marker on each, as on the API's staff routes.
            assert auth.STAFF_PERMISSION in handler.opt, f"{route.path} has no auth.staff_only(...) option"
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((method, route.path, auth.staff_permission(handler.opt)))
    return sorted(found, key=lambda r: r[1] == "/console/logout")


def console_call(client: httpx.Client, method: str, template: str, csrf: str | None) -> httpx.Response:
    data = {"reason": "enumerated", "confirm": "yes", **({"csrf_token": csrf} if csrf else {})}
    return client.request(method, ghost(template), data=data if method == "POST" else None)


def test_console_routes_are_enumerated(app: Litestar) -> None:
    routes = console_routes(app)
    admin_only = {(m, p) for m, p, perm in routes if perm not in STAFF_PERMISSIONS[PlatformRole.support]}
    assert ("POST", "/console/orgs/{org_id:uuid}/suspend") in admin_only
    assert ("GET", "/console/orgs/{org_id:uuid}") not in admin_only
    assert len(routes) >= 12


def test_every_console_route_sends_non_staff_to_sign_in(
    app: Litestar, live_server: LiveServer, org: OrgWorld
) -> None:
    # No session (a bearer token, even a platform admin's, opens nothing here): GET is sent to sign
    # in, anything else refused with a problem document.
    with httpx.Client(base_url=live_server.url, follow_redirects=False) as client:
        for method, template, _ in console_routes(app):
            response = client.request(method, ghost(template), headers=bearer(org.tokens["owner"]))
            if method == "GET":
                assert response.status_code == 303 and response.headers["location"] == "/console/login"
            else:
                assert response.status_code == 401, f"{method} {template}: {response.status_code}"
                assert response.headers["content-type"].startswith("application/problem+json")


def test_support_is_refused_exactly_the_admin_only_console_routes(
    app: Litestar, live_server: LiveServer, settings: Settings, engine: Engine, client: httpx.Client
) -> None:
    _, token = make_user(engine, platform_role=PlatformRole.support)
    session, csrf = console_session(live_server.url, settings, email_of(client, token))
    support = STAFF_PERMISSIONS[PlatformRole.support]
    refused, allowed = [], []
    with contextlib.closing(session):
        for method, template, permission in console_routes(app):
            response = console_call(session, method, template, csrf)
            (refused if response.status_code == 403 else allowed).append((method, template))
            if permission not in support:
                assert response.status_code == 403, f"{method} {template} answered {response.status_code}"
                assert "may not do this" in response.json()["detail"]
            else:
                assert response.status_code not in {401, 403}, f"{method} {template}: {response.text}"
    assert refused and allowed


def test_every_console_write_needs_the_csrf_token(
    app: Litestar, live_server: LiveServer, settings: Settings, engine: Engine, client: httpx.Client
) -> None:
    _, token = make_user(engine, platform_role=PlatformRole.admin)
    session, _ = console_session(live_server.url, settings, email_of(client, token))
    with contextlib.closing(session):
        writes = [(m, p) for m, p, _ in console_routes(app) if m != "GET"]
        assert writes
        for method, template in writes:
            response = console_call(session, method, template, None)
            assert response.status_code == 403, f"{method} {template} answered {response.status_code}"
            assert "CSRF" in response.json()["detail"]
