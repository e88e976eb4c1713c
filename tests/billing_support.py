"""Helpers for the billing tests: organizations made straight in a database, a local Stripe with
plans, and settings pointing at both."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, text

from api.auth.models import User, UserStatus
from api.db.base import new_id
from api.members.models import Membership, MembershipStatus, OrgRole
from api.orgs.models import Organization
from api.settings import Settings
from api.stripe_local import LocalStripe
from api.stripe_local.seed import add_plans
from tests.harness import unique


def insert_org(
    engine: Engine, *, members: int = 1, stripe_customer_id: str | None = None, slug: str | None = None
) -> uuid.UUID:
    """An organization with ``members`` active members (the first an owner)."""
    org_id = new_id()
    slug = slug or unique("bill")
    with engine.begin() as conn:
        conn.execute(
            insert(Organization).values(
                id=org_id, name=f"Org {slug}", slug=slug, stripe_customer_id=stripe_customer_id
            )
        )
        for i in range(members):
            add_member(conn, org_id, OrgRole.owner if i == 0 else OrgRole.member)
    return org_id


def add_member(conn: Any, org_id: uuid.UUID, role: OrgRole = OrgRole.member) -> None:
    user_id = new_id()
    conn.execute(
        insert(User).values(
            id=user_id, email=f"{unique('u')}@bill.example", name="U", status=UserStatus.active
        )
    )
    conn.execute(
        insert(Membership).values(
            id=new_id(), organization_id=org_id, user_id=user_id, role=role, status=MembershipStatus.active
        )
    )


def add_usage(engine: Engine, org_id: uuid.UUID, users: int) -> None:
    """Events of ``users`` distinct users today (the reconciliation's Postgres usage source)."""
    with engine.begin() as conn:
        conn.execute(text("SELECT keel_ensure_event_partitions(current_date - 1, 3)"))
        for i in range(users):
            conn.execute(
                text(
                    "INSERT INTO events (organization_id, message_id, event, user_id, timestamp, received_at,"
                    " properties, context) VALUES (:o, :m, 'page', :u, now(), now(), '{}', '{}')"
                ),
                {"o": org_id, "m": unique("m"), "u": f"user-{i}"},
            )


def settings_for(database_url: str, stripe: LocalStripe | None, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        warehouse_path=tmp_path / "no-warehouse.duckdb",
        stripe_api_key=stripe.api_key if stripe else "sk_test_nothing",
        stripe_api_base=stripe.url if stripe else None,
        **extra,
    )


def subscribe(
    stripe: LocalStripe,
    org_id: uuid.UUID,
    prices: dict[str, str],
    *,
    seats: int = 5,
    status: str = "active",
    plan: str = "team_monthly",
    at: int | None = None,
) -> tuple[str, str]:
    """A Stripe customer naming ``org_id`` in its metadata, with one subscription. Returns (customer, sub)."""
    customer = stripe.store.add_customer(name=str(org_id), metadata={"organization_id": str(org_id)}, at=at)
    sub = stripe.store.add_subscription(
        customer["id"],
        prices[plan],
        quantity=seats,
        status=status,
        metadata={"organization_id": str(org_id)},
        at=at,
    )
    return customer["id"], sub["id"]


def plans(stripe: LocalStripe) -> dict[str, str]:
    return add_plans(stripe.store)


def mirror_row(engine: Engine, sub_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM subscriptions WHERE stripe_subscription_id = :s"), {"s": sub_id}
        ).first()
    return dict(row._mapping) if row else None
