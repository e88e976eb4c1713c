"""The demo's Stripe: what ``keel dev`` (``make run``) starts when no real Stripe key is set."""

from __future__ import annotations

import os
from typing import Any

from api.billing.stripe_local import DEFAULT_API_KEY, LocalStripe, StripeStore
from api.billing.stripe_local.seed import DemoOrg, plant_after_sync, seed_demo
from api.settings import Settings


def uses_real_stripe(settings: Settings) -> bool:
    return bool(settings.stripe_api_key) and settings.stripe_api_key != DEFAULT_API_KEY


async def demo_orgs(session: Any) -> list[DemoOrg]:
    from sqlalchemy import func, select

    from api.db.models import Membership, MembershipStatus, Organization

    members = (
        select(func.count())
        .where(Membership.organization_id == Organization.id, Membership.status == MembershipStatus.active)
        .correlate(Organization)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(Organization.id, Organization.name, members).where(Organization.deleted_at.is_(None))
    )
    return [DemoOrg(org_id, name, int(n)) for org_id, name, n in rows.all()]


def start_demo_stripe(settings: Settings, database_url: str) -> tuple[Settings, LocalStripe | None, str]:
    """With a real ``KEEL_STRIPE_API_KEY``, change nothing. Otherwise start the local
    Stripe-compatible server on a free port, seed it for the organizations in the database, sync
    the mirror from it, plant a few discrepancies in Stripe and reconcile once, so the billing
    screen and the reconciliation report have something to show.

    Returns the settings pointing at it (also exported as ``KEEL_STRIPE_API_BASE`` and
    ``KEEL_STRIPE_API_KEY`` for the flows run in this process), the server (stop it on exit, or
    let the process end) and a one-line summary.
    """
    if uses_real_stripe(settings):
        return settings, None, "Stripe: the real API (KEEL_STRIPE_API_KEY is set)"
    from api.billing.services import _in_session, run_reconciliation, run_sync

    server = LocalStripe(StripeStore(seed=1)).start()
    local = settings.with_(stripe_api_key=server.api_key, stripe_api_base=server.url)
    os.environ["KEEL_STRIPE_API_KEY"], os.environ["KEEL_STRIPE_API_BASE"] = server.api_key, server.url
    orgs = _in_session(database_url, demo_orgs)
    seeded = seed_demo(server.store, orgs)
    synced = run_sync(local, database_url)
    plant_after_sync(server.store, seeded)
    result, _ = run_reconciliation(local, database_url)
    return (
        local,
        server,
        (
            f"Stripe: local server {server.url} (key {server.api_key}); {synced.subscriptions} subscriptions"
            f" mirrored; reconciliation found {len(result.found)} discrepancies"
        ),
    )
