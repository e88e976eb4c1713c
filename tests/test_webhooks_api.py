"""The webhook API as an organization uses it (the session's server: production SSRF rules)."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest
from sqlalchemy import Engine

from tests.harness import OrgWorld, auth
from tests.hooks import create_endpoint, delivery_rows, publish
from tests.test_bad_input import assert_problem

HOOK = "https://hooks.example.com/keel"


def test_endpoint_lifecycle(client: httpx.Client, org: OrgWorld) -> None:
    created = create_endpoint(
        client, org, HOOK, description="billing sync", event_types=["member.*", "org.updated"]
    )
    secret = created["secret"]
    assert secret.startswith("whsec_") and 24 <= len(base64.b64decode(secret[6:])) <= 64
    base = f"/v1/orgs/{org.id}/webhook-endpoints"
    one = client.get(f"{base}/{created['id']}", headers=org.headers("admin")).json()
    assert "secret" not in one and one["event_types"] == ["member.*", "org.updated"] and one["enabled"]
    assert client.get(f"{base}/{created['id']}/secret", headers=org.headers("owner")).json() == {
        "secret": secret, "previous_secret": None, "previous_secret_expires_at": None,
    }  # fmt: skip
    changed = client.patch(
        f"{base}/{created['id']}",
        json={"enabled": False, "disabled_reason": "maintenance"},
        headers=org.headers("owner"),
    ).json()
    assert changed["enabled"] is False and changed["disabled_reason"] == "maintenance"
    again = client.patch(
        f"{base}/{created['id']}", json={"enabled": True}, headers=org.headers("owner")
    ).json()
    assert again["enabled"] is True and again["disabled_reason"] is None
    listed = client.get(base, headers=org.headers("owner")).json()
    assert [e["id"] for e in listed["items"]] == [created["id"]] and listed["next_cursor"] is None
    assert client.delete(f"{base}/{created['id']}", headers=org.headers("owner")).status_code == 204
    assert_problem(client.get(f"{base}/{created['id']}", headers=org.headers("owner")), 404)
    assert client.get(base, headers=org.headers("owner")).json()["items"] == []


def test_only_owners_and_admins_manage_webhooks(client: httpx.Client, org: OrgWorld) -> None:
    base = f"/v1/orgs/{org.id}/webhook-endpoints"
    for role in ("billing", "member", "viewer"):
        assert_problem(client.post(base, json={"url": HOOK}, headers=org.headers(role)), 403)
        assert_problem(client.get(base, headers=org.headers(role)), 403)
        assert_problem(
            client.post(f"/v1/orgs/{org.id}/webhook-messages", json={"event_type": "a.b", "payload": {}},
                        headers=org.headers(role)), 403,
        )  # fmt: skip
    assert_problem(client.get(base, headers=auth(org.ingest_key)), 404)  # a key reaches only its routes


def test_messages_are_idempotent_and_fan_out_by_filter(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    everything = create_endpoint(client, org, HOOK + "/all")
    members = create_endpoint(client, org, HOOK + "/members", event_types=["member.*"])
    exact = create_endpoint(client, org, HOOK + "/exact", event_types=["invoice.paid"])
    create_endpoint(client, org, HOOK + "/off", enabled=False)
    sent = client.post(
        f"/v1/orgs/{org.id}/webhook-messages",
        json={"event_type": "member.role_changed", "payload": {"x": 1}, "message_id": "evt-1"},
        headers=auth(org.ingest_key),  # the organization's own ingest key may publish
    )
    assert sent.status_code == 202 and sent.json()["deliveries"] == 2 and sent.json()["duplicate"] is False
    again = publish(client, org, "member.role_changed", {"x": 2}, message_id="evt-1")
    assert again["duplicate"] is True and again["id"] == sent.json()["id"] and again["deliveries"] == 2
    assert publish(client, org, "invoice.paid", {})["deliveries"] == 2
    assert publish(client, org, "invoice.paid.late", {})["deliveries"] == 1
    rows = delivery_rows(engine, org.id)
    by_endpoint: dict[str, int] = {}
    for row in rows:
        by_endpoint[str(row["endpoint_id"])] = by_endpoint.get(str(row["endpoint_id"]), 0) + 1
    assert by_endpoint == {everything["id"]: 3, members["id"]: 1, exact["id"]: 1}


def test_member_and_org_changes_publish_messages(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    endpoint = create_endpoint(client, org, HOOK, event_types=["member.*", "org.*"])
    client.post(f"/v1/orgs/{org.id}/members", json={"email": f"{uuid.uuid4().hex[:8]}@t.example", "role": "viewer"},
                headers=org.headers("owner"))  # fmt: skip
    client.patch(
        f"/v1/orgs/{org.id}/members/{org.user_ids['member']}",
        json={"role": "viewer"},
        headers=org.headers("owner"),
    )
    client.delete(f"/v1/orgs/{org.id}/members/{org.user_ids['viewer']}", headers=org.headers("owner"))
    client.patch(f"/v1/orgs/{org.id}", json={"name": "Renamed"}, headers=org.headers("owner"))
    listed = client.get(
        f"/v1/orgs/{org.id}/webhook-deliveries",
        params={"endpoint_id": endpoint["id"]},
        headers=org.headers("owner"),
    ).json()["items"]
    assert [d["event_type"] for d in listed] == [
        "org.updated",
        "member.removed",
        "member.role_changed",
        "member.invited",
    ]
    detail = client.get(
        f"/v1/orgs/{org.id}/webhook-deliveries/{listed[2]['id']}", headers=org.headers("owner")
    ).json()
    assert detail["payload"]["role"] == "viewer" and detail["payload"]["previous_role"] == "member"
    assert detail["payload"]["user_id"] == org.user_ids["member"] and detail["attempt_log"] == []
    assert detail["status"] == "pending"


def test_delivery_filters_and_pagination(client: httpx.Client, org: OrgWorld) -> None:
    create_endpoint(client, org, HOOK)
    for i in range(5):
        publish(client, org, "report.ready" if i % 2 else "report.failed", {"i": i})
    base = f"/v1/orgs/{org.id}/webhook-deliveries"
    first = client.get(base, params={"limit": 2}, headers=org.headers("owner")).json()
    second = client.get(
        base, params={"limit": 2, "cursor": first["next_cursor"]}, headers=org.headers("owner")
    ).json()
    third = client.get(
        base, params={"limit": 2, "cursor": second["next_cursor"]}, headers=org.headers("owner")
    ).json()
    ids = [d["id"] for page in (first, second, third) for d in page["items"]]
    assert len(ids) == 5 == len(set(ids)) and third["next_cursor"] is None
    ready = client.get(base, params={"event_type": "report.ready"}, headers=org.headers("owner")).json()[
        "items"
    ]
    assert len(ready) == 2
    assert (
        len(client.get(base, params={"event_type": "report.*"}, headers=org.headers("owner")).json()["items"])
        == 5
    )
    assert (
        client.get(base, params={"status": "succeeded"}, headers=org.headers("owner")).json()["items"] == []
    )
    assert (
        client.get(base, params={"since": "2999-01-01T00:00:00Z"}, headers=org.headers("owner")).json()[
            "items"
        ]
        == []
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": 42}, "url"),
        ({"url": "http://hooks.example.com/"}, "url"),
        ({"url": "https://192.168.0.10/hook"}, "url"),
        ({"url": "https://169.254.169.254/"}, "url"),
        ({"url": "https://localhost/"}, "url"),
        ({"url": "x" * 3000}, "url"),
        ({"url": "https://h.example.com", "event_types": ["bad type"]}, "event_types[0]"),
        ({"url": "https://h.example.com", "event_types": ["member.*.x"]}, "event_types[0]"),
        ({"url": "https://h.example.com", "description": "d" * 501}, "description"),
        ({"url": "https://h.example.com", "extra": True}, "extra"),
    ],
)
def test_endpoint_input_is_validated(client: httpx.Client, org: OrgWorld, body: dict, field: str) -> None:
    assert_problem(
        client.post(f"/v1/orgs/{org.id}/webhook-endpoints", json=body, headers=org.headers("owner")),
        422,
        field,
    )


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"payload": {}}, 422, "event_type"),
        ({"event_type": "has space", "payload": {}}, 422, "event_type"),
        ({"event_type": "member.added\n", "payload": {}}, 422, "event_type"),
        ({"event_type": "a.b", "payload": []}, 422, "payload"),
        ({"event_type": "a.b", "payload": {"n": "\u0000"}}, 422, "payload"),
        ({"event_type": "a.b", "payload": {}, "message_id": ""}, 422, "message_id"),
        ({"event_type": "a.b", "payload": {}, "message_id": "x" * 129}, 422, "message_id"),
    ],
)
def test_message_input_is_validated(
    client: httpx.Client, org: OrgWorld, body: dict, status: int, field: str
) -> None:
    assert_problem(
        client.post(f"/v1/orgs/{org.id}/webhook-messages", json=body, headers=org.headers("owner")),
        status,
        field,
    )


def test_actions_on_missing_or_busy_things_are_precise(client: httpx.Client, org: OrgWorld) -> None:
    base = f"/v1/orgs/{org.id}"
    ghost = uuid.uuid4()
    for method, path in [("GET", f"webhook-endpoints/{ghost}"), ("PATCH", f"webhook-endpoints/{ghost}"),
                         ("DELETE", f"webhook-endpoints/{ghost}"), ("POST", f"webhook-endpoints/{ghost}/rotate-secret"),
                         ("GET", f"webhook-endpoints/{ghost}/stats"), ("GET", f"webhook-deliveries/{ghost}"),
                         ("POST", f"webhook-deliveries/{ghost}/retry")]:  # fmt: skip
        assert_problem(
            client.request(
                method, f"{base}/{path}", json={} if method == "PATCH" else None, headers=org.headers("owner")
            ),
            404,
        )
    endpoint = create_endpoint(client, org, HOOK)
    assert_problem(
        client.post(f"{base}/webhook-endpoints/{endpoint['id']}/recover", headers=org.headers("owner")), 400
    )
    future = client.post(
        f"{base}/webhook-endpoints/{endpoint['id']}/recover",
        params={"since": "2999-01-01T00:00:00Z"},
        headers=org.headers("owner"),
    )
    assert_problem(future, 422, "since")
    assert_problem(
        client.patch(f"{base}/webhook-endpoints/{endpoint['id']}", json={"disabled_reason": "why"}, headers=org.headers("owner")),
        422, "disabled_reason",
    )  # fmt: skip
    client.patch(
        f"{base}/webhook-endpoints/{endpoint['id']}", json={"enabled": False}, headers=org.headers("owner")
    )
    assert_problem(
        client.post(
            f"{base}/webhook-endpoints/{endpoint['id']}/recover",
            params={"since": "2020-01-01T00:00:00Z"},
            headers=org.headers("owner"),
        ),
        409,
    )


def test_admin_org_view_shows_failing_endpoints(
    client: httpx.Client, org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    healthy = create_endpoint(client, org, HOOK + "/ok")
    broken = create_endpoint(client, org, HOOK + "/broken")
    client.patch(
        f"/v1/orgs/{org.id}/webhook-endpoints/{broken['id']}",
        json={"enabled": False, "disabled_reason": "410"},
        headers=org.headers("owner"),
    )
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=auth(staff_support[1])).json()
    failing = {e["id"]: e for e in view["failing_endpoints"]}
    assert broken["id"] in failing and healthy["id"] not in failing
    assert failing[broken["id"]]["enabled"] is False and failing[broken["id"]]["disabled_reason"] == "410"
