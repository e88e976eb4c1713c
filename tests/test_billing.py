"""The billing mirror's event ordering, the billing screen, and billing in the org health score."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, delete, insert, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from api.billing.mirror import MalformedStripeObject, apply_stripe_event, parse_subscription
from api.billing.models import Subscription, SubscriptionStatus
from api.billing.stripe_api import make_client
from api.db.base import new_id
from api.db.engine import make_async_engine, make_sessionmaker
from api.stripe_local import LocalStripe, StripeStore
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.billing_support import insert_org, mirror_row, plans, settings_for, subscribe
from tests.harness import OrgWorld, auth
from tests.test_stripe_inbound import send
from warehouse import queries
from warehouse.build import build_warehouse


@pytest.fixture
def local_stripe() -> Iterator[LocalStripe]:
    # Ids of their own: these tests share the session database with every other test.
    with LocalStripe(StripeStore(seed=uuid.uuid4().int)) as server:
        yield server


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[Any]]:
    engine = make_async_engine(database_url, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


MIRRORED = ("stripe_customer_id", "stripe_price_id", "stripe_product_id", "status", "seats", "unit_amount",
            "currency", "interval", "current_period_end", "trial_end", "cancel_at_period_end", "canceled_at")  # fmt: skip


async def mirror_of(sessions: async_sessionmaker[Any], sub_id: str) -> dict[str, Any] | None:
    async with sessions() as session:
        row = await session.scalar(select(Subscription).where(Subscription.stripe_subscription_id == sub_id))
        return {k: getattr(row, k) for k in MIRRORED} if row else None


def expected_of(obj: dict[str, Any]) -> dict[str, Any]:
    state = parse_subscription(obj).columns()
    return {k: state[k] for k in MIRRORED}


async def apply_all(sessions: async_sessionmaker[Any], events: list[dict[str, Any]]) -> list[str]:
    outcomes = []
    for event in events:  # one transaction per delivery, as the webhook receiver does
        async with sessions() as session, session.begin():
            outcomes.append(await apply_stripe_event(session, event))
    return outcomes


async def test_subscription_events_in_any_order_leave_stripes_newest_state(
    engine: Engine, local_stripe: LocalStripe, sessions: async_sessionmaker[Any], tmp_path: Path
) -> None:
    store, prices = local_stripe.store, plans(local_stripe)
    org_id = insert_org(engine, members=2)
    base = 1_800_000_000
    _, sub_id = subscribe(local_stripe, org_id, prices, seats=3, status="trialing", at=base)
    store.update_subscription(sub_id, status="active", at=base + 10)
    store.update_subscription(sub_id, quantity=7, at=base + 20)
    store.update_subscription(sub_id, price=prices["business_monthly"], at=base + 30)
    store.update_subscription(sub_id, status="past_due", at=base + 40)
    store.update_subscription(sub_id, cancel_at_period_end=True, at=base + 50)
    store.update_subscription(sub_id, status="active", at=base + 60)
    # The events as Stripe serves them (the webhook receiver gets the same objects), through the SDK.
    client = make_client(settings_for("unused", local_stripe, tmp_path))
    listed = client.v1.events.list(params={"type": "customer.subscription.*", "limit": 3})
    events = [e.to_dict() for e in listed.auto_paging_iter()]
    assert len(events) == 7
    newest = expected_of(store.subscriptions[sub_id])
    orders = [sorted(events, key=lambda e: e["created"]), sorted(events, key=lambda e: -e["created"])]
    orders += [random.Random(seed).sample(events, len(events)) for seed in range(6)]
    for order in orders:
        async with sessions() as session, session.begin():
            await session.execute(delete(Subscription).where(Subscription.stripe_subscription_id == sub_id))
        outcomes = await apply_all(sessions, order + order[:2])  # redeliveries too
        assert await mirror_of(sessions, sub_id) == newest
        # A redelivered older event is ignored; the newest one, redelivered, is applied again (a no-op).
        assert outcomes[-2:] == ["processed" if e["created"] == base + 60 else "ignored" for e in order[:2]]
    # An event older than the state held changes nothing and says so.
    assert await apply_all(sessions, [min(events, key=lambda e: e["created"])]) == ["ignored"]
    # Deletion is final: a same-second report cannot revive a canceled subscription.
    store.update_subscription(sub_id, status="canceled", at=base + 70)
    deleted = store.subscription_events()[-1]
    assert deleted["type"] == "customer.subscription.deleted"
    revived = {**deleted, "id": "evt_same_second", "type": "customer.subscription.updated",
               "data": {"object": {**deleted["data"]["object"], "status": "active"}}}  # fmt: skip
    assert await apply_all(sessions, [deleted, revived]) == ["processed", "ignored"]
    assert (await mirror_of(sessions, sub_id))["status"] == SubscriptionStatus.canceled  # type: ignore[index]
    with engine.connect() as conn:
        actors = set(conn.execute(text(
            "SELECT actor_type, actor_id FROM audit_log WHERE resource_id = :s"), {"s": sub_id}).all())  # fmt: skip
    assert {t for t, _ in actors} == {"stripe"} and all(i.startswith("evt_") for _, i in actors)


def test_signed_subscription_events_through_the_receiver_leave_stripes_newest_state(
    client: httpx.Client, engine: Engine, local_stripe: LocalStripe
) -> None:
    """The same history as above, but as Stripe delivers it: each event signed and posted to
    ``POST /v1/webhooks/stripe``, in order, newest first and shuffled, with redeliveries."""
    store, prices = local_stripe.store, plans(local_stripe)
    base = 1_800_000_000
    orders = ["oldest first", "newest first", *(f"shuffled {seed}" for seed in range(3))]
    for n, order in enumerate(orders):
        org_id = insert_org(engine, members=2)
        at = base + n * 1000
        _, sub_id = subscribe(local_stripe, org_id, prices, seats=3, status="trialing", at=at)
        for step, change in enumerate(
            [{"status": "active"}, {"quantity": 7}, {"price": prices["business_monthly"]},
             {"status": "past_due"}, {"cancel_at_period_end": True}, {"status": "active"}], start=1
        ):  # fmt: skip
            store.update_subscription(sub_id, at=at + 10 * step, **change)
        # The events exactly as the local Stripe serves them on the wire (and would post them).
        events = [e for e in store.subscription_events() if e["data"]["object"]["id"] == sub_id]
        assert len(events) == 7
        if order == "oldest first":
            events.sort(key=lambda e: e["created"])
        elif order == "newest first":
            events.sort(key=lambda e: -e["created"])
        else:
            random.Random(n).shuffle(events)
        answers = [send(client, e) for e in events + events[:2]]  # Stripe redelivers too
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert [a.json()["duplicate"] for a in answers] == [False] * 7 + [True] * 2
        assert expected_of(store.subscriptions[sub_id]) == {
            k: v
            for k, v in mirror_row(engine, sub_id).items()
            if k in MIRRORED  # type: ignore[union-attr]
        }, order
        with engine.connect() as conn:
            statuses = dict(conn.execute(text(
                "SELECT external_id, status FROM inbound_events WHERE external_id = ANY(:ids)"),
                {"ids": [e["id"] for e in events]}).all())  # fmt: skip
        # Every delivery is recorded once; the ones older than the state held at the time are ignored.
        newest_so_far = 0
        for event in events:
            applied = event["created"] > newest_so_far
            assert statuses[event["id"]] == ("processed" if applied else "ignored"), (order, event["type"])
            newest_so_far = max(newest_so_far, event["created"])


async def test_invoice_and_unknown_events_and_malformed_objects(
    engine: Engine, local_stripe: LocalStripe, sessions: async_sessionmaker[Any]
) -> None:
    store, prices = local_stripe.store, plans(local_stripe)
    org_id = insert_org(engine)
    _, sub_id = subscribe(local_stripe, org_id, prices)
    assert await apply_all(sessions, store.subscription_events()) == ["processed"]
    invoice = {"id": "in_1", "object": "invoice", "status": "open", "amount_due": 1200, "amount_paid": 0,
               "currency": "usd", "parent": {"subscription_details": {"subscription": sub_id}}}  # fmt: skip
    failed = {
        "id": "evt_inv",
        "type": "invoice.payment_failed",
        "created": store.now(),
        "data": {"object": invoice},
    }
    other = {**failed, "id": "evt_other", "data": {"object": {**invoice, "parent": None}}}
    plan = {"id": "evt_plan", "type": "plan.created", "created": store.now(), "data": {"object": {}}}
    assert await apply_all(sessions, [failed, other, plan]) == ["processed", "ignored", "ignored"]
    with engine.connect() as conn:
        logged = conn.execute(
            text("SELECT metadata->>'type', organization_id FROM audit_log WHERE resource_id = 'in_1'")
        ).all()
    assert logged == [("invoice.payment_failed", org_id)]
    bad = store.subscription_events()[0]
    bad["data"]["object"]["items"] = {"data": []}
    with pytest.raises(MalformedStripeObject, match=f"subscription {sub_id}: no items"):
        await apply_all(sessions, [bad])
    stranger = store.add_customer(metadata={})
    nobody = store.add_subscription(stranger["id"], prices["team_monthly"])
    assert await apply_all(sessions, [store.subscription_events()[-1]]) == ["ignored"]  # no org to link it to
    assert await mirror_of(sessions, nobody["id"]) is None


def seed_mirror(engine: Engine, org_id: str, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    row = {
        "id": new_id(), "organization_id": uuid.UUID(org_id), "stripe_subscription_id": f"sub_{uuid.uuid4().hex[:14]}",
        "stripe_customer_id": f"cus_{uuid.uuid4().hex[:14]}", "stripe_price_id": "price_team",
        "stripe_product_id": "prod_team", "plan": "team_monthly", "status": "active", "seats": 12,
        "unit_amount": 1200, "currency": "usd", "interval": "month", "current_period_start": now,
        "current_period_end": now.replace(year=now.year + 1), "trial_end": None, "cancel_at_period_end": True,
        "canceled_at": None, "stripe_state_at": now, "synced_at": now, **overrides,
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(Subscription).values(**row))
    return row


def test_the_billing_screen_shows_the_mirror_and_seats_used_to_those_allowed(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    row = seed_mirror(engine, org.id)
    with engine.connect() as conn:
        active = conn.execute(text("SELECT count(*) FROM memberships WHERE organization_id = :o AND status = 'active'"),
                              {"o": org.id}).scalar()  # fmt: skip
    for role in ("owner", "admin", "billing"):
        answer = client.get(f"/v1/orgs/{org.id}/billing", headers=org.headers(role))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (
            body["plan"] == row["plan"] and body["status"] == row["status"] and body["seats"] == row["seats"]
        )
        assert body["seats_used"] == active == 5
        assert datetime.fromisoformat(body["renewal_date"]) == row["current_period_end"]
        assert body["trial_end"] is None and body["cancel_at_period_end"] is True
        assert (body["amount"], body["currency"]) == (row["unit_amount"] * row["seats"], "usd")
        assert datetime.fromisoformat(body["last_synced_at"]) == row["synced_at"]
    for role in ("member", "viewer"):
        refused = client.get(f"/v1/orgs/{org.id}/billing", headers=org.headers(role))
        assert refused.status_code == 403 and refused.headers["content-type"].startswith(
            "application/problem+json"
        )
    assert client.get(f"/v1/orgs/{org.id}/billing", headers=other_org.headers("owner")).status_code == 404
    none = client.get(f"/v1/orgs/{other_org.id}/billing", headers=other_org.headers("billing")).json()
    assert none["status"] is None and none["plan"] is None and none["seats_used"] == 5
    staff = auth(staff_support[1])
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=staff).json()
    assert view["billing"]["seats"] == 12 and view["billing"]["seats_used"] == 5
    assert client.get("/v1/admin/billing/reconciliation", headers=staff).status_code == 200
    assert client.get("/v1/admin/billing/reconciliation", headers=org.headers("owner")).status_code == 403


def test_bad_input_on_the_billing_routes_is_a_problem_not_a_500(client: httpx.Client, org: OrgWorld) -> None:
    for path in ("/v1/orgs/not-a-uuid/billing", "/v1/orgs/%00/billing", f"/v1/orgs/{org.id}/billing/extra"):
        answer = client.get(path, headers=org.headers("owner"))
        assert answer.status_code in {400, 404, 422}, (path, answer.status_code)
        assert answer.headers["content-type"].startswith("application/problem+json")
    for method in ("POST", "PUT", "DELETE"):
        answer = client.request(method, f"/v1/orgs/{org.id}/billing", headers=org.headers("owner"), json={})
        assert answer.status_code == 405 and answer.headers["content-type"].startswith(
            "application/problem+json"
        )
    assert client.get("/v1/admin/billing/reconciliation").status_code == 401


def test_a_past_due_subscription_costs_health_points_with_the_reason_in_words(
    engine: Engine, org: OrgWorld, other_org: OrgWorld, database_url: str, tmp_path: Path
) -> None:
    seed_mirror(engine, org.id, status="past_due", seats=5)
    seed_mirror(engine, other_org.id, status="active", seats=5)
    lake = Lake.open(str(tmp_path / "lake"))
    export_tasks.write_schemas(lake)
    for snapshot in export_tasks.SNAPSHOTS.values():
        export_tasks.export_snapshot(database_url, lake, snapshot)
    for table in export_tasks.INCREMENTAL.values():
        export_tasks.export_table(database_url, lake, table)
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(lake.url, warehouse)
    health = {r["organization_id"]: r for r in queries.org_health(warehouse).iter_rows(named=True)}
    late, paying = health[org.id], health[other_org.id]
    assert late["billing_status"] == "past_due" and paying["billing_status"] == "active"
    assert "The subscription is past_due." in late["reasons"]
    assert not any("subscription" in reason for reason in paying["reasons"])
    assert late["score"] < paying["score"]
