"""Billing reconciliation: 10,000 subscriptions against the local Stripe-compatible server.

Run by `make bench`. A private embedded Postgres (temporary directory) holds 10,000 organizations
with members, their Stripe customers and subscriptions on the local Stripe server (a uvicorn
thread on a port chosen at run time) and the matching mirror rows (bulk-inserted: setup, not the
thing measured); then a few hundred changes are made in Stripe behind the mirror's back and
`run_reconciliation` reads Stripe whole through the official SDK (auto-pagination, 100 per page,
prices and products expanded) and compares, records and repairs in one transaction.

Printed apart: the time spent in Stripe calls (the same-run baseline: what reading Stripe alone
costs, which any reconciliation pays) and the time spent on Keel's side (reading the mirror,
members and usage, comparing, recording, repairing); and subscriptions/s for the whole run.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import bindparam, insert, update

from api.auth.models import User, UserStatus
from api.billing.mirror import parse_subscription
from api.billing.models import Subscription
from api.billing.services import run_reconciliation
from api.db.base import new_id
from api.db.engine import make_sync_engine
from api.members.models import Membership, MembershipStatus, OrgRole
from api.orgs.models import Organization
from api.settings import Settings
from api.stripe_local import LocalStripe, StripeStore
from api.stripe_local.seed import add_plans
from bench.harness import private_postgres

SUBSCRIPTIONS = 10_000
MEMBERS_PER_ORG = 3
CHANGED_IN_STRIPE = 300


def seed(url: str, stripe: LocalStripe) -> list[str]:
    engine = make_sync_engine(url)
    prices = list(add_plans(stripe.store).values())
    orgs, users, memberships = [], [], []
    for i in range(SUBSCRIPTIONS):
        org_id = new_id()
        orgs.append({"id": org_id, "name": f"Bench {i}", "slug": f"bench-{i:05d}"})
        for m in range(MEMBERS_PER_ORG):
            user_id = new_id()
            users.append(
                {"id": user_id, "email": f"u{i}-{m}@bench.example", "name": "U", "status": UserStatus.active}
            )
            memberships.append({
                "id": new_id(), "organization_id": org_id, "user_id": user_id,
                "role": OrgRole.owner if m == 0 else OrgRole.member, "status": MembershipStatus.active,
            })  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(Organization), orgs)
        conn.execute(insert(User), users)
        conn.execute(insert(Membership), memberships)
    engine.dispose()
    subs, rows = [], []
    now = datetime.now(UTC)
    for i, org in enumerate(orgs):
        meta = {"organization_id": str(org["id"])}
        customer = stripe.store.add_customer(name=org["name"], metadata=meta)
        sub = stripe.store.add_subscription(
            customer["id"], prices[i % len(prices)], quantity=5, metadata=meta
        )
        state = parse_subscription(sub)
        mirrored = {
            "id": new_id(),
            "stripe_subscription_id": sub["id"],
            "stripe_state_at": now,
            "synced_at": now,
        }
        rows.append({**state.columns(), **mirrored, "organization_id": org["id"]})
        subs.append(sub["id"])
    engine = make_sync_engine(url)
    with engine.begin() as conn:
        conn.execute(
            update(Organization)
            .where(Organization.id == bindparam("org"))
            .values(stripe_customer_id=bindparam("cus")),
            [{"org": r["organization_id"], "cus": r["stripe_customer_id"]} for r in rows],
        )
        conn.execute(insert(Subscription), rows)
    engine.dispose()
    return subs


def main() -> None:
    with private_postgres() as url, LocalStripe(StripeStore(seed=3)) as stripe:
        config = Settings(
            database_url=url, stripe_api_key=stripe.api_key, stripe_api_base=stripe.url,
            warehouse_path=Path("/nonexistent/warehouse.duckdb"),
        )  # fmt: skip
        started = time.perf_counter()
        subs = seed(url, stripe)
        print(
            f"setup: {SUBSCRIPTIONS:,} orgs, Stripe subscriptions and mirror rows"
            f" in {time.perf_counter() - started:.1f} s"
        )
        rng = random.Random(5)
        for sub_id in rng.sample(subs, CHANGED_IN_STRIPE):
            stripe.store.update_subscription(sub_id, quantity=rng.randint(6, 20))

        for label, repair in (("compare only", False), ("compare + repair", True)):
            tick = time.perf_counter()
            result, stripe_seconds = run_reconciliation(config, url, repair=repair)
            total = time.perf_counter() - tick
            keel_seconds = total - stripe_seconds
            print(
                f"{label:<17} {SUBSCRIPTIONS / total:>9,.0f} subscriptions/s  total {total:6.2f} s"
                f" | Stripe calls (baseline) {stripe_seconds:6.2f} s"
                f" = {SUBSCRIPTIONS / stripe_seconds:>7,.0f}/s"
                f" | Keel side (read, compare, record{', repair' if repair else ''}) {keel_seconds:6.2f} s"
                f" (of which reading Keel's side and comparing {result.compare_seconds:5.2f} s)"
                f" | {len(result.found)} discrepancies, {result.repaired} repaired"
            )


if __name__ == "__main__":
    main()
