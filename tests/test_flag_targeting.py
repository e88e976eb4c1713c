"""Flag targeting over HTTP: rules on fields Keel resolves (plan, traits), segments, variants,
scheduled changes, stale flags, explanations and the bad input they refuse."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from api.db.engine import make_async_engine, make_sessionmaker
from api.flags.schedules import apply_due
from api.flags.store import FACTS_TTL
from api.stripe_local import LocalStripe, StripeStore
from tests.billing_support import plans, subscribe
from tests.harness import OrgWorld, audit_rows, auth, unique
from tests.test_bad_input import assert_problem
from tests.test_flags import REQUEST_SLACK, create_flag, eventually
from tests.test_stripe_inbound import send

#: A change of an org's facts (plan, traits) reaches rules within the facts cache's bound.
FACTS_BOUND = FACTS_TTL + 2.0 + REQUEST_SLACK


@pytest.fixture
def admin(staff_admin: tuple[str, str]) -> str:
    return staff_admin[1]


@pytest.fixture
def local_stripe() -> Iterator[LocalStripe]:
    with LocalStripe(StripeStore(seed=uuid.uuid4().int)) as server:
        yield server


def group_call(client: httpx.Client, org: OrgWorld, traits: dict[str, Any]) -> None:
    """What a product does to tell Keel an org's traits: a Segment ``group`` call with its write key."""
    call = {"userId": "u-traits", "groupId": org.id, "traits": traits, "messageId": unique("group")}
    answer = client.post("/segment/v1/group", json=call, auth=(org.ingest_key, ""))
    assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text


def one(client: httpx.Client, key: str, headers: dict[str, str], **params: str) -> dict[str, Any]:
    response = client.get(f"/v1/flags/evaluate/{key}", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def sync_stripe_events(client: httpx.Client, stripe: LocalStripe, sub_id: str, seen: set[str]) -> None:
    """Deliver (signed, over HTTP) every event of the subscription not delivered yet."""
    for event in stripe.store.subscription_events():
        if event["data"]["object"]["id"] == sub_id and event["id"] not in seen:
            assert send(client, event).status_code == 200
            seen.add(event["id"])


def test_a_plan_rule_turns_on_when_the_stripe_subscription_moves_to_enterprise(
    client: httpx.Client, org: OrgWorld, admin: str, local_stripe: LocalStripe
) -> None:
    prices = plans(local_stripe)
    _, sub_id = subscribe(local_stripe, uuid.UUID(org.id), prices, plan="team_monthly")
    seen: set[str] = set()
    sync_stripe_events(client, local_stripe, sub_id, seen)
    rule = {"name": "enterprise", "constraints": [
        {"field": "org.plan", "operator": "IN", "values": ["enterprise_monthly"]}]}  # fmt: skip
    flag = create_flag(client, admin, rollout_percentage=0, rules=[rule])
    assert flag["rules"][0]["constraints"][0]["field"] == "org.plan"
    key_headers = auth(org.ingest_key)
    eventually(lambda: client.get(f"/v1/flags/evaluate/{flag['key']}", headers=key_headers).status_code == 200,
               what="the flag reaches the cache")  # fmt: skip
    assert one(client, flag["key"], key_headers)["enabled"] is False

    local_stripe.store.update_subscription(sub_id, price=prices["enterprise_monthly"])
    sync_stripe_events(client, local_stripe, sub_id, seen)
    eventually(
        lambda: one(client, flag["key"], key_headers)["enabled"], what="the plan rule", within=FACTS_BOUND
    )
    assert one(client, flag["key"], key_headers) == {
        "key": flag["key"], "enabled": True, "reason": "rule", "rule": "enterprise"}  # fmt: skip
    every = client.get("/v1/flags/evaluate", headers=key_headers).json()["flags"]
    assert every[flag["key"]] is True

    # The admin org view says why, for that org.
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=auth(admin)).json()
    state = next(f for f in view["flags"] if f["key"] == flag["key"])
    assert state["enabled"] is True and state["rule"] == "enterprise"
    assert "rule 'enterprise' matched" in state["explanation"]


def test_a_group_call_turns_a_trait_rule_on_through_a_segment(
    client: httpx.Client, engine: Engine, org: OrgWorld, admin: str
) -> None:
    segment = unique("fintech-eu")
    made = client.post("/v1/admin/segments", headers=auth(admin), json={
        "name": segment, "description": "Fintech in the EU", "constraints": [
            {"field": "org.traits.industry", "operator": "IN", "values": ["fintech"]},
            {"field": "org.traits.region", "operator": "STR_STARTS_WITH", "values": ["eu-"]},
        ]})  # fmt: skip
    assert made.status_code == 201, made.text
    flag = create_flag(client, admin, rules=[{"name": "fintech", "segments": [segment]}])
    key_headers = auth(org.ingest_key)
    eventually(lambda: client.get(f"/v1/flags/evaluate/{flag['key']}", headers=key_headers).status_code == 200,
               what="the flag reaches the cache")  # fmt: skip
    first = one(client, flag["key"], key_headers)
    assert first["enabled"] is False

    group_call(client, org, {"industry": "fintech", "region": "eu-west"})
    eventually(
        lambda: one(client, flag["key"], key_headers)["enabled"], what="the trait rule", within=FACTS_BOUND
    )

    # The segment changes: the rule follows at the next refresh, no flag write needed.
    changed = client.patch(f"/v1/admin/segments/{segment}", headers=auth(admin), json={"constraints": [
        {"field": "org.traits.region", "operator": "STR_STARTS_WITH", "values": ["us-"]}]})  # fmt: skip
    assert changed.status_code == 200, changed.text
    eventually(lambda: not one(client, flag["key"], key_headers)["enabled"], what="the segment's change")
    # A segment a rule names is not deleted; the answer names the flag.
    in_use = client.delete(f"/v1/admin/segments/{segment}", headers=auth(admin))
    assert_problem(in_use, 409)
    assert flag["key"] in in_use.json()["detail"]
    actions = [r["action"] for r in audit_rows(engine, resource_id=segment)]
    assert actions == ["flag.segment_created", "flag.segment_updated"]


def test_variants_are_served_hashed_or_overridden_per_org(
    client: httpx.Client, org: OrgWorld, other_org: OrgWorld, admin: str
) -> None:
    variants = [
        {"name": "control", "weight": 500, "value": {"layout": "old"}},
        {"name": "treatment", "weight": 500, "value": {"layout": "new"}},
    ]
    flag = create_flag(client, admin, rollout_percentage=100, variants=variants)
    key = flag["key"]
    key_headers = auth(org.ingest_key)
    eventually(lambda: client.get(f"/v1/flags/evaluate/{key}", headers=key_headers).status_code == 200,
               what="the flag reaches the cache")  # fmt: skip
    served = one(client, key, key_headers)
    assert served["variant"] in ("control", "treatment")
    assert served["value"] == next(v["value"] for v in variants if v["name"] == served["variant"])
    every = client.get("/v1/flags/evaluate", headers=key_headers).json()
    assert every["variants"][key] == served["variant"]

    other = "treatment" if served["variant"] == "control" else "control"
    put = client.put(f"/v1/admin/flags/{key}/overrides/{org.id}", headers=auth(admin),
                     json={"enabled": True, "reason": "pilot", "variant": other})  # fmt: skip
    assert put.status_code == 200 and put.json()["variant"] == other
    eventually(lambda: one(client, key, key_headers).get("variant") == other, what="the variant override")
    bad = client.put(f"/v1/admin/flags/{key}/overrides/{org.id}", headers=auth(admin),
                     json={"enabled": True, "reason": "pilot", "variant": "nope"})  # fmt: skip
    assert_problem(bad, 422)
    assert bad.json()["errors"][0]["field"] == "variant"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rules": [{"name": "r", "constraints": [{"field": "org.plan", "operator": "LIKE", "values": ["x"]}]}]},
         "rules[0].constraints[0].operator"),
        ({"rules": [{"name": "r", "constraints": [{"field": "org.colour", "operator": "IN", "values": ["x"]}]}]},
         "rules[0].constraints[0].field"),
        ({"rules": [{"name": "r", "constraints": [{"field": "org.seats", "operator": "NUM_GT", "values": ["ten"]}]}]},
         "rules[0].constraints[0].values[0]"),
        ({"rules": [{"name": "r", "constraints": [{"field": "org.seats", "operator": "NUM_GT", "values": []}]}]},
         "rules[0].constraints[0].values"),
        ({"rules": [{"name": "r", "constraints": [
            {"field": "org.created_at", "operator": "DATE_AFTER", "values": ["yesterday"]}]}]},
         "rules[0].constraints[0].values[0]"),
        ({"rules": [{"name": "r", "constraints": [
            {"field": "context.app_version", "operator": "SEMVER_GT", "values": ["v1"]}]}]},
         "rules[0].constraints[0].values[0]"),
        ({"rules": [{"name": "r", "segments": ["no-such-segment"]}]}, "rules[0].segments[0]"),
        ({"rules": [{"name": "r"}, {"name": "r"}]}, "rules[1].name"),
        ({"variants": [{"name": "a", "weight": 500}, {"name": "b", "weight": 499}]}, "variants"),
    ],
)  # fmt: skip
def test_bad_rules_and_variants_are_422_naming_the_field(
    client: httpx.Client, admin: str, body: dict[str, Any], field: str
) -> None:
    created = client.post("/v1/admin/flags", json={"key": unique("bad"), **body}, headers=auth(admin))
    assert_problem(created, 422)
    assert created.json()["errors"][0]["field"] == field, created.json()
    flag = create_flag(client, admin)
    patched = client.patch(f"/v1/admin/flags/{flag['key']}", json=body, headers=auth(admin))
    assert_problem(patched, 422)
    assert patched.json()["errors"][0]["field"] == field


def test_malformed_rule_shapes_are_refused_not_500(client: httpx.Client, admin: str) -> None:
    for rules in ({"name": "x"}, [{"constraints": []}], [{"name": "r", "constraints": [{"field": 1}]}],
                  [{"name": "r", "rollout_percentage": 101}]):  # fmt: skip
        response = client.post(
            "/v1/admin/flags", json={"key": unique("bad"), "rules": rules}, headers=auth(admin)
        )
        assert response.status_code in (400, 422), response.text
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_scheduled_change_is_applied_as_system_naming_who_scheduled_it(
    client: httpx.Client, engine: Engine, database_url: str, staff_admin: tuple[str, str]
) -> None:
    admin_id, admin = staff_admin
    flag = create_flag(client, admin, rollout_percentage=0)
    at = datetime.now(UTC) + timedelta(days=3)
    made = client.post(f"/v1/admin/flags/{flag['key']}/schedules", headers=auth(admin),
                       json={"at": at.isoformat(), "patch": {"rollout_percentage": 25}})  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "pending"
    bad = client.post(f"/v1/admin/flags/{flag['key']}/schedules", headers=auth(admin),
                      json={"at": at.isoformat(), "patch": {"rollout_percentage": 250}})  # fmt: skip
    assert bad.status_code in (400, 422)

    async_engine = make_async_engine(database_url, pool_size=1)
    try:
        sessions = make_sessionmaker(async_engine)
        async with sessions() as session, session.begin():
            assert await apply_due(session, now=at - timedelta(seconds=1)) == 0  # not yet due
        async with sessions() as session, session.begin():
            assert await apply_due(session, now=at + timedelta(seconds=30)) >= 1
    finally:
        await async_engine.dispose()
    current = client.get(f"/v1/admin/flags/{flag['key']}", headers=auth(admin)).json()
    assert current["rollout_percentage"] == 25
    listed = client.get(f"/v1/admin/flags/{flag['key']}/schedules", headers=auth(admin)).json()["items"]
    assert [s["status"] for s in listed] == ["applied"]
    entry = next(r for r in audit_rows(engine, resource_id=flag["key"]) if r["action"] == "flag.updated")
    assert entry["actor_type"] == "system"
    assert entry["metadata"]["scheduled_by"] == admin_id
    assert entry["metadata"]["after"]["rollout_percentage"] == 25


def test_stale_flags_are_listed_for_staff(
    client: httpx.Client, engine: Engine, org: OrgWorld, admin: str, staff_support: tuple[str, str]
) -> None:
    old = create_flag(client, admin, rollout_percentage=100)["key"]
    fresh = create_flag(client, admin, rollout_percentage=100)["key"]
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE feature_flags DISABLE TRIGGER feature_flags_changed"))
        conn.execute(
            text("UPDATE feature_flags SET created_at = now() - interval '40 days', "
                 "updated_at = now() - interval '40 days' WHERE key = ANY(:k)"), {"k": [old, fresh]}
        )  # fmt: skip
        conn.execute(text("ALTER TABLE feature_flags ENABLE TRIGGER feature_flags_changed"))
        conn.execute(
            text("INSERT INTO flag_evaluation_marks (flag_key, last_evaluated_at) VALUES (:k, now())"),
            {"k": fresh},
        )
    listed = client.get("/v1/admin/stale-flags", headers=auth(staff_support[1]))
    assert listed.status_code == 200, listed.text
    by_key = {f["key"]: f for f in listed.json()["items"]}
    assert by_key[old]["reasons"] == ["full_rollout", "not_evaluated"]
    assert by_key[fresh]["reasons"] == ["full_rollout"]
    assert_problem(client.get("/v1/admin/stale-flags", headers=org.headers("owner")), 403)
