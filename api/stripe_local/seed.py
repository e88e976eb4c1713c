"""Seeds for the local Stripe server: the demo's subscriptions, with a few planted discrepancies.

Ids come from a random generator seeded with the organizations' ids, so a restarted demo server
hands out the same customer and subscription ids and the mirror in Postgres still matches.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from api.stripe_local.store import StripeStore

PLANS = {
    # lookup key: (product name, unit amount in cents per seat per month)
    "team_monthly": ("Team", 1200),
    "business_monthly": ("Business", 2900),
    "enterprise_monthly": ("Enterprise", 5900),
}


@dataclass(frozen=True)
class DemoOrg:
    id: uuid.UUID
    name: str
    active_members: int


def add_plans(store: StripeStore, *, at: int | None = None) -> dict[str, str]:
    """One product and one monthly per-seat price per plan; returns lookup key → price id."""
    prices = {}
    for lookup_key, (name, amount) in PLANS.items():
        product = store.add_product(name, at=at)
        prices[lookup_key] = store.add_price(product["id"], unit_amount=amount, lookup_key=lookup_key, at=at)[
            "id"
        ]
    return prices


def seed_demo(store: StripeStore, orgs: list[DemoOrg]) -> dict[str, Any]:
    """Subscriptions for the demo organizations (the first four get a story each), and one customer
    no organization has. ``plant_after_sync`` then changes Stripe behind the mirror's back."""
    store._random.seed("|".join(sorted(str(o.id) for o in orgs)))
    # Subscribed 20 days ago: a monthly period renews in 10 days, as a live Stripe subscription would
    # (40 days ago put every demo renewal date in the past, which the health report rightly flags).
    at = store.now() - 20 * 86400
    prices = add_plans(store, at=at)
    plan_cycle = list(prices)
    subscriptions: dict[str, str] = {}
    for index, org in enumerate(sorted(orgs, key=lambda o: o.name)):
        customer = store.add_customer(
            name=org.name, email=f"billing@{org.name.lower().replace(' ', '-')}.example",
            metadata={"organization_id": str(org.id)}, at=at,
        )  # fmt: skip
        story = index % 4
        seats = org.active_members + 10
        status = "active"
        trial_end = None
        if story == 1:
            seats = max(org.active_members - 5, 1)  # over_seat_limit: more members than seats bought
        elif story == 2:
            status = "past_due"  # the org health score loses points for it
        elif story == 3:
            status, trial_end = "trialing", store.now() + 7 * 86400
        sub = store.add_subscription(
            customer["id"], prices[plan_cycle[index % len(plan_cycle)]], quantity=seats, status=status,
            metadata={"organization_id": str(org.id)}, trial_end=trial_end, at=at,
        )  # fmt: skip
        subscriptions[str(org.id)] = sub["id"]
    store.add_customer(name="Stray Customer Ltd", email="ap@stray.example", metadata={}, at=at)
    return {"prices": prices, "subscriptions": subscriptions}


def plant_after_sync(store: StripeStore, seeded: dict[str, Any]) -> list[str]:
    """Change Stripe after the mirror was synced, so reconciliation has mismatches to show."""
    planted = []
    subs = list(seeded["subscriptions"].values())
    if subs:
        current = store.subscriptions[subs[0]]["items"]["data"][0]["quantity"]
        store.update_subscription(subs[0], quantity=current + 5)
        planted.append(f"{subs[0]}: seat_count_mismatch")
    if len(subs) > 3:
        store.update_subscription(subs[3], price=seeded["prices"]["enterprise_monthly"])
        planted.append(f"{subs[3]}: plan_mismatch")
    return planted
