"""Support finds what fails, through the API: staff's delivery list and detail, the org view's failing
endpoints with delivery ids, its members a page at a time, and audit entries of one shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from api.settings import Settings
from tests.harness import OrgWorld, audit_rows, auth, make_org
from tests.hooks import create_endpoint, deliver, publish
from tests.receivers import Receiver, always
from tests.test_bad_input import assert_problem

DELIVERIES = "/v1/admin/webhook-deliveries"


def walk(client: httpx.Client, path: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


@pytest.fixture
async def failing_world(
    hooks_client: httpx.Client, engine: Engine, hooks_settings: Settings
) -> tuple[OrgWorld, OrgWorld, dict[str, Any], dict[str, Any]]:
    """Two organizations: ``a`` with a healthy and a failing (HTTP 500) endpoint, ``b`` with a
    healthy one; three messages each, delivered by a real worker until nothing is due."""
    a = make_org(hooks_client, engine, roles=("owner",))
    b = make_org(hooks_client, engine, roles=("owner",))
    with Receiver(always(200)) as ok, Receiver(always(500, body=b"database down")) as broken:
        healthy = create_endpoint(hooks_client, a, ok.url)
        failing = create_endpoint(hooks_client, a, broken.url)
        create_endpoint(hooks_client, b, ok.url)
        for world in (a, b):
            publish(hooks_client, world, "invoice.paid", {"n": 1})
            publish(hooks_client, world, "invoice.voided", {"n": 2})
            publish(hooks_client, world, "member.added", {"n": 3})
        await deliver(hooks_settings, a.id)
        await deliver(hooks_settings, b.id)
    return a, b, healthy, failing


def test_staff_list_every_orgs_deliveries_with_the_org_lists_filters(
    hooks_client: httpx.Client,
    engine: Engine,
    failing_world: tuple[OrgWorld, OrgWorld, dict[str, Any], dict[str, Any]],
    staff_support: tuple[str, str],
) -> None:
    a, b, healthy, failing = failing_world
    staff_id, token = staff_support
    headers = auth(token)
    recent = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    both = walk(hooks_client, DELIVERIES, headers, limit=200, since=recent)
    mine = [d for d in both if d["organization_id"] in {a.id, b.id}]
    assert len(mine) == 9  # a: 3 messages x 2 endpoints; b: 3 x 1
    ids = [d["id"] for d in both]
    assert ids == sorted(ids, reverse=True)  # newest first

    only_a = walk(hooks_client, DELIVERIES, headers, org_id=a.id, limit=2)  # pages of two
    assert len(only_a) == 6 and len({d["id"] for d in only_a}) == 6
    assert {d["organization_id"] for d in only_a} == {a.id}
    # The same filters as the organization's own list, and the same answers.
    own = hooks_client.get(
        f"/v1/orgs/{a.id}/webhook-deliveries", params={"status": "exhausted"}, headers=a.headers("owner")
    ).json()["items"]
    exhausted = walk(hooks_client, DELIVERIES, headers, org_id=a.id, status="exhausted")
    assert exhausted == own and len(exhausted) == 3
    assert {d["endpoint_id"] for d in exhausted} == {failing["id"]}
    by_endpoint = walk(hooks_client, DELIVERIES, headers, endpoint_id=healthy["id"])
    assert {d["status"] for d in by_endpoint} == {"succeeded"} and len(by_endpoint) == 3
    invoices = walk(hooks_client, DELIVERIES, headers, org_id=a.id, event_type="invoice.*")
    assert sorted(d["event_type"] for d in invoices) == ["invoice.paid"] * 2 + ["invoice.voided"] * 2
    assert walk(hooks_client, DELIVERIES, headers, org_id=a.id, event_type="member.added", status="exhausted")
    newest = only_a[0]["created_at"]  # the last message's deliveries share its creation time
    latest = [d for d in only_a if datetime.fromisoformat(d["created_at"]) >= datetime.fromisoformat(newest)]
    assert 0 < len(latest) < len(only_a)
    assert walk(hooks_client, DELIVERIES, headers, org_id=a.id, since=newest) == latest
    assert walk(hooks_client, DELIVERIES, headers, org_id=a.id, until=newest) == only_a[len(latest) :]

    # Each organization a page showed records the staff read in its own log.
    viewed = audit_rows(engine, organization_id=b.id, action="staff.webhook_deliveries_viewed")
    assert viewed and all(r["actor_type"] == "staff" and r["actor_id"] == staff_id for r in viewed)
    (filtered,) = [
        r
        for r in audit_rows(engine, organization_id=a.id, action="staff.webhook_deliveries_viewed")
        if r["metadata"]["filters"] == {"org_id": a.id, "status": "exhausted"}
    ]
    assert filtered["metadata"]["deliveries_shown"] == 3 and filtered["ip"] is not None


def test_the_org_view_names_failing_endpoints_latest_failed_deliveries(
    hooks_client: httpx.Client,
    engine: Engine,
    failing_world: tuple[OrgWorld, OrgWorld, dict[str, Any], dict[str, Any]],
    staff_support: tuple[str, str],
) -> None:
    a, _, healthy, failing = failing_world
    headers = auth(staff_support[1])
    view = hooks_client.get(f"/v1/admin/orgs/{a.id}", headers=headers).json()
    (named,) = view["failing_endpoints"]
    assert named["id"] == failing["id"] and named["failed_deliveries_24h"] == 3
    exhausted = walk(hooks_client, DELIVERIES, headers, endpoint_id=failing["id"], status="exhausted")
    assert named["latest_failed_delivery_ids"] == [d["id"] for d in exhausted]  # newest first
    # Each id opens, with every attempt and what the endpoint answered.
    detail = hooks_client.get(f"{DELIVERIES}/{named['latest_failed_delivery_ids'][0]}", headers=headers)
    assert detail.status_code == 200
    attempts = detail.json()["attempt_log"]
    assert attempts and {a["status_code"] for a in attempts} == {500}
    assert attempts[0]["response_body"] == "database down"
    (read,) = [
        r
        for r in audit_rows(engine, organization_id=a.id, action="staff.webhook_deliveries_viewed")
        if r["resource_id"] == named["latest_failed_delivery_ids"][0]
    ]
    assert read["actor_type"] == "staff"
    assert healthy["id"] not in {e["id"] for e in view["failing_endpoints"]}


def test_the_delivery_list_is_for_staff_and_refuses_bad_filters(
    client: httpx.Client, org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    assert_problem(client.get(DELIVERIES, headers=org.headers("owner")), 403)
    assert_problem(client.get(DELIVERIES), 401)
    headers = auth(staff_support[1])
    ghost = "0190f0f0-0000-7000-8000-000000000000"
    assert_problem(client.get(DELIVERIES, params={"org_id": ghost}, headers=headers), 404)
    assert_problem(client.get(DELIVERIES, params={"status": "lost"}, headers=headers), 422, "status")
    assert_problem(client.get(DELIVERIES, params={"since": "yesterday"}, headers=headers), 422, "since")
    assert_problem(
        client.get(DELIVERIES, params={"event_type": "x" * 201}, headers=headers), 422, "event_type"
    )
    assert_problem(client.get(f"{DELIVERIES}/0190f0f0-0000-7000-8000-000000000000", headers=headers), 404)
    # Any offset Python can parse is a time (Postgres alone refuses offsets past ±15:59).
    for since in ("2026-01-01T00:00:00+20:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        assert client.get(DELIVERIES, params={"since": since}, headers=headers).status_code == 200, since


def test_the_org_view_pages_its_members(
    client: httpx.Client, engine: Engine, org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    for i in range(40):
        invited = client.post(
            f"/v1/orgs/{org.id}/members",
            json={"email": f"invitee{i}-{org.slug}@example.com", "role": "member"},
            headers=org.headers("owner"),
        )
        assert invited.status_code == 201, invited.text
    headers = auth(staff_support[1])
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=headers).json()
    assert len(view["members"]["items"]) == 20 and view["members"]["next_cursor"]
    assert view["active_members"] == 5 and view["invited_members"] == 40
    rest = walk(
        client, f"/v1/admin/orgs/{org.id}/members", headers, cursor=view["members"]["next_cursor"], limit=7
    )
    everyone = view["members"]["items"] + rest
    assert len(everyone) == 45 and len({m["user_id"] for m in everyone}) == 45
    # The same members, in the same order, as the organization's own list.
    own = walk(client, f"/v1/orgs/{org.id}/members", org.headers("owner"), limit=200)
    assert everyone == own
    viewed = audit_rows(engine, organization_id=org.id, action="staff.members_viewed")
    assert len(viewed) == 4 and all(r["actor_type"] == "staff" for r in viewed)  # 25 in pages of 7
    assert_problem(client.get(f"/v1/admin/orgs/{org.id}/members", headers=org.headers("owner")), 403)


def test_audit_entries_have_one_shape_in_every_answer(
    client: httpx.Client, org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    client.patch(f"/v1/orgs/{org.id}", json={"name": "Shape check"}, headers=org.headers("owner"))
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=auth(staff_support[1])).json()
    own = client.get(f"/v1/orgs/{org.id}/audit-logs", params={"limit": 200}, headers=org.headers("owner"))
    by_id = {e["id"]: e for e in own.json()["items"]}
    staff_wide = client.get(
        "/v1/admin/audit-logs", params={"org_id": org.id, "limit": 200}, headers=auth(staff_support[1])
    ).json()["items"]
    assert view["recent_audit"]
    for entry in view["recent_audit"]:
        assert entry == by_id[entry["id"]]
    updated = next(e for e in view["recent_audit"] if e["action"] == "org.updated")
    assert set(updated["actor"]) == {"type", "id", "name"} and "actor_type" not in updated
    assert updated["actor"]["type"] == "user" and updated["actor"]["id"] == org.user_ids["owner"]
    assert {tuple(sorted(e)) for e in staff_wide} == {tuple(sorted(updated))}


def test_admin_org_search_documents_q(client: httpx.Client) -> None:
    document = client.get("/schema/openapi.json").json()
    (q,) = [p for p in document["paths"]["/v1/admin/orgs"]["get"]["parameters"] if p["name"] == "q"]
    assert "member whose email" in q["description"] and "name, slug or `external_id`" in q["description"]
    assert "Stripe customer id" in q["description"]
