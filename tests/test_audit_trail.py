"""Every mutating route writes an audit entry (actor, IP, resource) in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import Engine, text

from api.audit.chain import GENESIS, entry_hash
from tests.harness import OrgWorld, audit_rows, auth, make_org, make_user, unique

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

Call = Callable[[httpx.Client, Engine, OrgWorld, str], httpx.Response]


def _invitee(client: httpx.Client, engine: Engine, world: OrgWorld) -> str:
    user_id, token = make_user(engine)
    email = client.get("/v1/me", headers=auth(token)).json()["email"]
    client.post(
        f"/v1/orgs/{world.id}/members",
        json={"email": email, "role": "member"},
        headers=world.headers("owner"),
    )
    world.tokens["invitee"] = token
    return user_id


def _new_flag(client: httpx.Client, staff_token: str) -> str:
    key = unique("flag")
    created = client.post("/v1/admin/flags", json={"key": key}, headers=auth(staff_token))
    assert created.status_code == 201, created.text
    return key


def _segment(client: httpx.Client, staff_token: str) -> str:
    name = unique("seg")
    made = client.post("/v1/admin/segments", json={"name": name, "constraints": [
        {"field": "org.plan", "operator": "IN", "values": ["enterprise"]}]}, headers=auth(staff_token))  # fmt: skip
    assert made.status_code == 201, made.text
    return name


_LATER = "2099-01-05T09:00:00Z"


def _scheduled_change(client: httpx.Client, staff_token: str) -> str:
    key = _new_flag(client, staff_token)
    made = client.post(f"/v1/admin/flags/{key}/schedules", json={"at": _LATER, "patch": {"rollout_percentage": 25}},
                       headers=auth(staff_token))  # fmt: skip
    assert made.status_code == 201, made.text
    return f"{key}/schedules/{made.json()['id']}"


def _endpoint(client: httpx.Client, world: OrgWorld) -> str:
    response = client.post(
        f"/v1/orgs/{world.id}/webhook-endpoints", json={"url": "https://hooks.example.com/audit"},
        headers=world.headers("owner"),
    )  # fmt: skip
    return response.json()["id"]


def _stream(client: httpx.Client, world: OrgWorld, *, paused: bool = False) -> str:
    response = client.post(
        f"/v1/orgs/{world.id}/audit-streams",
        json={"name": unique("s"), "type": "splunk_hec", "url": "https://splunk.example.com:8088", "token": "t0ken"},
        headers=world.headers("owner"),
    )  # fmt: skip
    stream_id = response.json()["id"]
    if paused:
        client.post(f"/v1/orgs/{world.id}/audit-streams/{stream_id}/pause", headers=world.headers("owner"))
    return stream_id


def _delivery(client: httpx.Client, world: OrgWorld) -> str:
    _endpoint(client, world)
    client.post(f"/v1/orgs/{world.id}/webhook-messages", json={"event_type": "audit.check", "payload": {}},
                headers=world.headers("owner"))  # fmt: skip
    return client.get(f"/v1/orgs/{world.id}/webhook-deliveries", headers=world.headers("owner")).json()[
        "items"
    ][0]["id"]


def _inbound_event(client: httpx.Client) -> str:
    import json
    import time

    import stripe

    from tests.conftest import STRIPE_SECRET

    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "customer.updated",
                       "created": int(time.time()), "livemode": False, "data": {"object": {}}})  # fmt: skip
    header = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET)
    response = client.post("/v1/webhooks/stripe", content=body, headers={"Stripe-Signature": header})
    return response.json()["id"]


def _console(client: httpx.Client, staff_token: str) -> str:
    """Sign the client in to the console by exchanging the staff token; the session's CSRF token."""
    import re

    form = client.get("/console/login")
    nonce = re.search(r'name="csrf_token" value="([^"]*)"', form.text)
    assert nonce
    signed = client.post("/console/login", data={"csrf_token": nonce.group(1), "token": staff_token})
    assert signed.status_code == 303, signed.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console").text)
    assert found
    return found.group(1)


def _console_post(client: httpx.Client, staff_token: str, path: str, **form: str) -> httpx.Response:
    csrf = _console(client, staff_token)
    return client.post(path, data={"csrf_token": csrf, "reason": "audited", "confirm": "yes", **form})


# One successful call per mutating route, with the action it must record.
CASES: dict[tuple[str, str], tuple[Call, str]] = {
    ("POST", "/v1/orgs"): (
        lambda c, e, w, s: c.post("/v1/orgs", json={"name": "N", "slug": unique("o")}, headers=w.headers("owner")),
        "org.created",
    ),
    ("PATCH", "/v1/orgs/{org_id:uuid}"): (
        lambda c, e, w, s: c.patch(f"/v1/orgs/{w.id}", json={"name": "Renamed"}, headers=w.headers("owner")),
        "org.updated",
    ),
    ("DELETE", "/v1/orgs/{org_id:uuid}"): (
        lambda c, e, w, s: c.delete(f"/v1/orgs/{w.id}", headers=w.headers("owner")),
        "org.deleted",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/members"): (
        lambda c, e, w, s: c.post(
            f"/v1/orgs/{w.id}/members", json={"email": f"{unique('i')}@t.example", "role": "viewer"}, headers=w.headers("owner")
        ),
        "member.invited",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/members/accept"): (
        lambda c, e, w, s: (_invitee(c, e, w), c.post(f"/v1/orgs/{w.id}/members/accept", headers=w.headers("invitee")))[1],
        "member.joined",
    ),
    ("PATCH", "/v1/orgs/{org_id:uuid}/members/{user_id:uuid}"): (
        lambda c, e, w, s: c.patch(f"/v1/orgs/{w.id}/members/{w.user_ids['member']}", json={"role": "viewer"}, headers=w.headers("owner")),
        "member.role_changed",
    ),
    ("DELETE", "/v1/orgs/{org_id:uuid}/members/{user_id:uuid}"): (
        lambda c, e, w, s: c.delete(f"/v1/orgs/{w.id}/members/{w.user_ids['member']}", headers=w.headers("owner")),
        "member.removed",
    ),
    ("POST", "/v1/me/tokens"): (
        lambda c, e, w, s: c.post("/v1/me/tokens", json={"name": "t"}, headers=w.headers("owner")),
        "token.created",
    ),
    ("DELETE", "/v1/me/tokens/{token_id:uuid}"): (
        lambda c, e, w, s: c.delete(
            f"/v1/me/tokens/{c.post('/v1/me/tokens', json={'name': 't'}, headers=w.headers('owner')).json()['id']}",
            headers=w.headers("owner"),
        ),
        "token.revoked",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/ingest-keys"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/ingest-keys", json={"name": "k"}, headers=w.headers("admin")),
        "ingest_key.created",
    ),
    ("DELETE", "/v1/orgs/{org_id:uuid}/ingest-keys/{key_id:uuid}"): (
        lambda c, e, w, s: c.delete(f"/v1/orgs/{w.id}/ingest-keys/{w.ingest_key_id}", headers=w.headers("admin")),
        "ingest_key.revoked",
    ),
    ("POST", "/v1/admin/ingest-keys"): (
        lambda c, e, w, s: c.post("/v1/admin/ingest-keys", json={"name": "p"}, headers=auth(s)),
        "platform_ingest_key.created",
    ),
    ("DELETE", "/v1/admin/ingest-keys/{key_id:uuid}"): (
        lambda c, e, w, s: c.delete(
            f"/v1/admin/ingest-keys/{c.post('/v1/admin/ingest-keys', json={'name': 'p'}, headers=auth(s)).json()['id']}",
            headers=auth(s),
        ),
        "platform_ingest_key.revoked",
    ),
    ("POST", "/v1/admin/orgs/{org_id:uuid}/suspend"): (
        lambda c, e, w, s: c.post(f"/v1/admin/orgs/{w.id}/suspend", json={"reason": "r"}, headers=auth(s)),
        "org.suspended",
    ),
    ("POST", "/v1/admin/orgs/{org_id:uuid}/unsuspend"): (
        lambda c, e, w, s: (
            c.post(f"/v1/admin/orgs/{w.id}/suspend", json={"reason": "r"}, headers=auth(s)),
            c.post(f"/v1/admin/orgs/{w.id}/unsuspend", headers=auth(s)),
        )[1],
        "org.unsuspended",
    ),
    ("PUT", "/v1/admin/users/{user_id:uuid}/platform-role"): (
        lambda c, e, w, s: c.put(f"/v1/admin/users/{w.user_ids['viewer']}/platform-role", json={"platform_role": "support"}, headers=auth(s)),
        "user.platform_role_changed",
    ),
    ("POST", "/v1/admin/flags"): (
        lambda c, e, w, s: c.post("/v1/admin/flags", json={"key": unique("flag"), "rollout_percentage": 5}, headers=auth(s)),
        "flag.created",
    ),
    ("PATCH", "/v1/admin/flags/{key:str}"): (
        lambda c, e, w, s: c.patch(f"/v1/admin/flags/{_new_flag(c, s)}", json={"rollout_percentage": 25}, headers=auth(s)),
        "flag.updated",
    ),
    ("DELETE", "/v1/admin/flags/{key:str}"): (
        lambda c, e, w, s: c.delete(f"/v1/admin/flags/{_new_flag(c, s)}", headers=auth(s)),
        "flag.archived",
    ),
    ("PUT", "/v1/admin/flags/{key:str}/overrides/{org_id:uuid}"): (
        lambda c, e, w, s: c.put(
            f"/v1/admin/flags/{_new_flag(c, s)}/overrides/{w.id}", json={"enabled": True, "reason": "beta"}, headers=auth(s)
        ),
        "flag.override_set",
    ),
    ("DELETE", "/v1/admin/flags/{key:str}/overrides/{org_id:uuid}"): (
        lambda c, e, w, s: (
            key := _new_flag(c, s),
            c.put(f"/v1/admin/flags/{key}/overrides/{w.id}", json={"enabled": False, "reason": "r"}, headers=auth(s)),
            c.delete(f"/v1/admin/flags/{key}/overrides/{w.id}", headers=auth(s)),
        )[2],
        "flag.override_removed",
    ),
    ("POST", "/v1/audit-logs"): (
        lambda c, e, w, s: c.post(
            "/v1/audit-logs",
            json={"action": "document.shared", "occurred_at": "2026-01-15T10:30:00Z",
                  "actor": {"type": "user", "id": "user_42", "name": "Ada"},
                  "targets": [{"type": "document", "id": "doc_7"}], "context": {"ip": "203.0.113.7"}},
            headers=auth(w.ingest_key),
        ),
        "document.shared",
    ),
    ("POST", "/v1/audit-logs/batch"): (
        lambda c, e, w, s: c.post(
            "/v1/audit-logs/batch",
            json={"entries": [{"action": "document.shared", "occurred_at": "2026-01-15T10:30:00Z",
                               "actor": {"type": "user", "id": "user_42"}, "idempotency_key": "trail-1",
                               "targets": [{"type": "document", "id": "doc_7"}], "context": {"ip": "203.0.113.7"}}]},
            headers=auth(w.ingest_key),
        ),
        "document.shared",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/webhook-endpoints"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/webhook-endpoints", json={"url": "https://hooks.example.com/a"}, headers=w.headers("admin")),
        "webhook_endpoint.created",
    ),
    ("PATCH", "/v1/orgs/{org_id:uuid}/webhook-endpoints/{endpoint_id:uuid}"): (
        lambda c, e, w, s: c.patch(f"/v1/orgs/{w.id}/webhook-endpoints/{_endpoint(c, w)}", json={"description": "changed"}, headers=w.headers("owner")),
        "webhook_endpoint.updated",
    ),
    ("DELETE", "/v1/orgs/{org_id:uuid}/webhook-endpoints/{endpoint_id:uuid}"): (
        lambda c, e, w, s: c.delete(f"/v1/orgs/{w.id}/webhook-endpoints/{_endpoint(c, w)}", headers=w.headers("owner")),
        "webhook_endpoint.deleted",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/webhook-endpoints/{endpoint_id:uuid}/rotate-secret"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/webhook-endpoints/{_endpoint(c, w)}/rotate-secret", headers=w.headers("owner")),
        "webhook_endpoint.secret_rotated",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/webhook-endpoints/{endpoint_id:uuid}/recover"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/webhook-endpoints/{_endpoint(c, w)}/recover", params={"since": "2020-01-01T00:00:00Z"}, headers=w.headers("owner")),
        "webhook_endpoint.recovered",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/webhook-deliveries/{delivery_id:uuid}/retry"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/webhook-deliveries/{_delivery(c, w)}/retry", headers=w.headers("owner")),
        "webhook_delivery.retried",
    ),
    ("POST", "/v1/admin/webhook-deliveries/{delivery_id:uuid}/retry"): (
        lambda c, e, w, s: c.post(f"/v1/admin/webhook-deliveries/{_delivery(c, w)}/retry", headers=auth(s)),
        "webhook_delivery.retried",
    ),
    ("POST", "/v1/admin/segments"): (
        lambda c, e, w, s: c.post("/v1/admin/segments", json={"name": unique("seg"), "constraints": [{"field": "org.traits.industry", "operator": "IN", "values": ["fintech"]}]}, headers=auth(s)),
        "flag.segment_created",
    ),
    ("PATCH", "/v1/admin/segments/{name:str}"): (
        lambda c, e, w, s: c.patch(f"/v1/admin/segments/{_segment(c, s)}", json={"description": "changed"}, headers=auth(s)),
        "flag.segment_updated",
    ),
    ("DELETE", "/v1/admin/segments/{name:str}"): (
        lambda c, e, w, s: c.delete(f"/v1/admin/segments/{_segment(c, s)}", headers=auth(s)),
        "flag.segment_deleted",
    ),
    ("POST", "/v1/admin/flags/{key:str}/schedules"): (
        lambda c, e, w, s: c.post(f"/v1/admin/flags/{_new_flag(c, s)}/schedules", json={"at": _LATER, "patch": {"enabled": False}}, headers=auth(s)),
        "flag.change_scheduled",
    ),
    ("DELETE", "/v1/admin/flags/{key:str}/schedules/{change_id:uuid}"): (
        lambda c, e, w, s: c.delete(f"/v1/admin/flags/{_scheduled_change(c, s)}", headers=auth(s)),
        "flag.schedule_canceled",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/audit-streams"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/audit-streams", json={"name": "s", "type": "datadog", "url": "https://http-intake.logs.datadoghq.eu", "token": "k3y"}, headers=w.headers("admin")),
        "audit_stream.created",
    ),
    ("PATCH", "/v1/orgs/{org_id:uuid}/audit-streams/{stream_id:uuid}"): (
        lambda c, e, w, s: c.patch(f"/v1/orgs/{w.id}/audit-streams/{_stream(c, w)}", json={"format": "ocsf"}, headers=w.headers("owner")),
        "audit_stream.updated",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/audit-streams/{stream_id:uuid}/pause"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/audit-streams/{_stream(c, w)}/pause", headers=w.headers("owner")),
        "audit_stream.paused",
    ),
    ("POST", "/v1/orgs/{org_id:uuid}/audit-streams/{stream_id:uuid}/resume"): (
        lambda c, e, w, s: c.post(f"/v1/orgs/{w.id}/audit-streams/{_stream(c, w, paused=True)}/resume", headers=w.headers("owner")),
        "audit_stream.resumed",
    ),
    ("DELETE", "/v1/orgs/{org_id:uuid}/audit-streams/{stream_id:uuid}"): (
        lambda c, e, w, s: c.delete(f"/v1/orgs/{w.id}/audit-streams/{_stream(c, w)}", headers=w.headers("owner")),
        "audit_stream.deleted",
    ),
    ("POST", "/v1/admin/inbound-events/{event_id:uuid}/reprocess"): (
        lambda c, e, w, s: c.post(f"/v1/admin/inbound-events/{_inbound_event(c)}/reprocess", headers=auth(s)),
        "inbound_event.reprocessed",
    ),
    # The console: the same services, as staff, each with its reason.
    ("POST", "/console/login"): (lambda c, e, w, s: _console_post(c, s, "/console/logout"), "staff.console_signed_in"),
    ("POST", "/console/logout"): (lambda c, e, w, s: _console_post(c, s, "/console/logout"), "staff.console_signed_out"),
    ("POST", "/console/orgs/{org_id:uuid}/suspend"): (
        lambda c, e, w, s: _console_post(c, s, f"/console/orgs/{w.id}/suspend"), "org.suspended",
    ),
    ("POST", "/console/orgs/{org_id:uuid}/unsuspend"): (
        lambda c, e, w, s: (
            c.post(f"/v1/admin/orgs/{w.id}/suspend", json={"reason": "r"}, headers=auth(s)),
            _console_post(c, s, f"/console/orgs/{w.id}/unsuspend"),
        )[1],
        "org.unsuspended",
    ),
    ("POST", "/console/orgs/{org_id:uuid}/deliveries/{delivery_id:uuid}/retry"): (
        lambda c, e, w, s: _console_post(c, s, f"/console/orgs/{w.id}/deliveries/{_delivery(c, w)}/retry"),
        "webhook_delivery.retried",
    ),
    ("POST", "/console/orgs/{org_id:uuid}/endpoints/{endpoint_id:uuid}/recover"): (
        lambda c, e, w, s: _console_post(c, s, f"/console/orgs/{w.id}/endpoints/{_endpoint(c, w)}/recover"),
        "webhook_endpoint.recovered",
    ),
    ("POST", "/console/orgs/{org_id:uuid}/flags/{key:str}/override"): (
        lambda c, e, w, s: _console_post(c, s, f"/console/orgs/{w.id}/flags/{_new_flag(c, s)}/override", enabled="on"),
        "flag.override_set",
    ),
    ("POST", "/console/orgs/{org_id:uuid}/flags/{key:str}/override/clear"): (
        lambda c, e, w, s: (lambda key: (
            _console_post(c, s, f"/console/orgs/{w.id}/flags/{key}/override", enabled="off"),
            _console_post(c, s, f"/console/orgs/{w.id}/flags/{key}/override/clear"),
        )[1])(_new_flag(c, s)),
        "flag.override_removed",
    ),
    ("POST", "/console/orgs/{org_id:uuid}/inbound-events/{event_id:uuid}/reprocess"): (
        lambda c, e, w, s: _console_post(c, s, f"/console/orgs/{w.id}/inbound-events/{_inbound_event(c)}/reprocess"),
        "inbound_event.reprocessed",
    ),
}  # fmt: skip


def mutating_routes(app: Litestar) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        for method in handler.http_methods & MUTATING
    }


# Data-plane writes: the product's own records, stored as they come, not actions taken in Keel.
NOT_AUDITED = {
    ("POST", "/console/orgs/{org_id:uuid}/reconcile"): "audited (billing.reconciliation_requested), but it "
    "needs a Stripe server: tests/test_console_pages.py runs it against the local Stripe",
    ("POST", "/v1/events"): "product analytics events are data, not administrative actions",
    ("POST", "/v1/events/batch"): "product analytics events are data, not administrative actions",
    **{
        ("POST", f"/segment/v1/{call}"): "Segment calls are product analytics events (data); the traits "
        "they set are recorded change by change in person_trait_changes / org_trait_changes"
        for call in ("batch", "track", "identify", "group", "page", "screen", "alias", *"btigpsa")
    },
    ("POST", "/segment/v1/m"): "analytics.js's own telemetry: answered and kept nowhere, so it "
    "changes nothing",
    ("POST", "/v1/orgs/{org_id:uuid}/webhook-messages"): "webhook messages are the product's data, each "
    "stored with its deliveries and every attempt (the record support reads), not administrative actions",
    ("POST", "/v1/orgs/{org_id:uuid}/audit-streams/{stream_id:uuid}/test"): "sends one test item to the "
    "stream's destination and answers the outcome; it changes nothing in Keel",
    ("POST", "/ofrep/v1/evaluate/flags"): "OpenFeature evaluations read flags; they change nothing",
    ("POST", "/ofrep/v1/evaluate/flags/{key:str}"): "OpenFeature evaluations read flags; they change nothing",
    ("POST", "/v1/orgs/{org_id:uuid}/audit-logs/checkpoints"): "signing the audit chain's head changes "
    "nothing: it adds a signature of what is there (itself append-only, listed with its time), and an "
    "entry for it would move the very head it signed",
    ("POST", "/v1/webhooks/stripe"): "Stripe's own requests: each is a row in inbound_webhook_requests "
    "(accepted, duplicate or rejected) and each event a row in inbound_events",
}


def test_every_mutating_route_has_a_case(app: Litestar) -> None:
    missing = mutating_routes(app) - set(CASES) - set(NOT_AUDITED)
    assert not missing, f"add an audit case for: {sorted(missing)}"


def test_every_mutating_route_writes_an_audit_entry(
    app: Litestar, client: httpx.Client, engine: Engine, staff_admin: tuple[str, str]
) -> None:
    for (method, path), (call, action) in sorted(CASES.items()):
        world = make_org(client, engine)
        request_id = f"audit-{uuid.uuid4().hex}"
        client.headers["X-Request-ID"] = request_id
        try:
            response = call(client, engine, world, staff_admin[1])
        finally:
            del client.headers["X-Request-ID"]
        # The console answers a form with a redirect back to the page (303), the API with 2xx.
        done = response.status_code < 300 or (path.startswith("/console/") and response.status_code == 303)
        assert done, f"{method} {path}: {response.status_code} {response.text}"
        rows = [r for r in audit_rows(engine, request_id=request_id) if r["action"] == action]
        assert rows, f"{method} {path} wrote no {action} entry"
        row = rows[-1]
        assert row["actor_type"] in {"user", "staff"} and row["actor_id"], (method, path, row)
        assert row["ip"] is not None, (method, path)
        assert row["resource_type"] and row["resource_id"], (method, path)


def test_changes_record_before_and_after(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    client.patch(
        f"/v1/orgs/{org.id}/members/{org.user_ids['member']}",
        json={"role": "admin"},
        headers=org.headers("owner"),
    )
    (row,) = audit_rows(engine, organization_id=org.id, action="member.role_changed")
    assert row["metadata"]["before"]["role"] == "member" and row["metadata"]["after"]["role"] == "admin"
    assert row["actor_id"] == org.user_ids["owner"]


def test_a_refused_change_writes_nothing(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    before = len(audit_rows(engine, organization_id=org.id))
    refused = client.patch(
        f"/v1/orgs/{org.id}/members/{org.user_ids['owner']}",
        json={"role": "viewer"},
        headers=org.headers("owner"),
    )
    assert refused.status_code == 409
    assert len(audit_rows(engine, organization_id=org.id)) == before


def test_each_org_chain_recomputes(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    client.patch(f"/v1/orgs/{org.id}", json={"name": "Chain check"}, headers=org.headers("admin"))
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    "SELECT id::text, organization_id::text, seq, occurred_at, actor_type, actor_id, actor_name,"
                    " action, resource_type, resource_id, metadata, host(ip) AS ip, user_agent, request_id,"
                    " prev_hash, hash FROM audit_log WHERE chain_key = :k ORDER BY seq"
                ),
                {"k": org.id},
            )
            .mappings()
            .all()
        )
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    prev = GENESIS
    for row in rows:
        assert row["prev_hash"] == prev
        assert entry_hash(dict(row), prev) == row["hash"]
        prev = row["hash"]


def test_publishable_keys_are_audited_under_their_own_actions(
    client: httpx.Client, engine: Engine, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    """The ingest-key routes create publishable keys too (``publishable: true``): those are
    audited as ``publishable_key.*`` / ``platform_publishable_key.*``, with their origins."""
    body = {"name": "web", "publishable": True, "allowed_origins": ["https://app.acme.example"]}
    org_keys, platform_keys = f"/v1/orgs/{org.id}/ingest-keys", "/v1/admin/ingest-keys"
    cases = [
        (org_keys, org.headers("admin"), "publishable_key", "user"),
        (platform_keys, auth(staff_admin[1]), "platform_publishable_key", "staff"),
    ]
    for path, headers, noun, actor_type in cases:
        created = client.post(path, json=body, headers=headers)
        assert created.status_code == 201, created.text
        key_id = created.json()["id"]
        assert client.delete(f"{path}/{key_id}", headers=headers).status_code == 204
        made, revoked = (
            audit_rows(engine, action=f"{noun}.{verb}", resource_id=key_id) for verb in ("created", "revoked")
        )
        assert len(made) == 1 and len(revoked) == 1, noun
        assert made[0]["metadata"]["after"]["allowed_origins"] == ["https://app.acme.example"]
        assert made[0]["actor_type"] == actor_type and made[0]["ip"] is not None
        assert revoked[0]["metadata"]["before"]["prefix"].startswith("keel_pub_")
        assert not audit_rows(engine, action="ingest_key.created", resource_id=key_id)
