"""The demo's Stripe: what ``keel dev`` (``make run``) starts when no real Stripe key is set.

Development tooling, like the rest of ``api.stripe_local``: only ``keel dev``, ``keel
stripe-mock`` and the tests import it (tests/test_layout.py), so no product path knows the fake or
its key. It plants demo data (customers linked to the demo's organizations, discrepancies) only in
the embedded database unless asked explicitly (``keel dev --plant-demo-stripe``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from api.settings import Settings
from api.stripe_local import DEFAULT_API_KEY, LocalStripe, StripeStore
from api.stripe_local.seed import DemoOrg, plant_after_sync, seed_demo


def uses_real_stripe(settings: Settings) -> bool:
    return bool(settings.stripe_api_key) and settings.stripe_api_key != DEFAULT_API_KEY


#: Where the local server's state lives, under the data directory: a restart serves the same
#: customers, subscriptions and ids, so the mirror and reconciliation see nothing new.
STATE_FILE = Path("stripe-local") / "state.json"


def state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


async def demo_orgs(session: Any) -> list[DemoOrg]:
    """The organizations the demo seeded (by their demo slugs), never one a user created."""
    from sqlalchemy import func, select

    from api.demo import DEMO_ORGS
    from api.members.models import Membership, MembershipStatus
    from api.orgs.models import Organization

    members = (
        select(func.count())
        .where(Membership.organization_id == Organization.id, Membership.status == MembershipStatus.active)
        .correlate(Organization)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(Organization.id, Organization.name, members).where(
            Organization.deleted_at.is_(None), Organization.slug.in_([slug for slug, *_ in DEMO_ORGS])
        )
    )
    return [DemoOrg(org_id, name, int(n)) for org_id, name, n in rows.all()]


#: How ``keel dev`` is asked to plant the demo's Stripe data in a database of KEEL_DATABASE_URL.
PLANT_ANYWHERE_FLAG = "--plant-demo-stripe"


def start_demo_stripe(
    settings: Settings, database_url: str, *, embedded: bool, plant_anywhere: bool = False
) -> tuple[Settings, LocalStripe | None, str]:
    """With a real ``KEEL_STRIPE_API_KEY``, change nothing. In a database that is not the embedded
    one (``embedded`` false: KEEL_DATABASE_URL is set), start nothing and plant nothing unless
    ``plant_anywhere`` (``keel dev --plant-demo-stripe``). Otherwise start the local
    Stripe-compatible server on a free port with its state from the data directory. The first
    time (no state yet) it is seeded for the demo's organizations, the mirror is synced from it and
    a few discrepancies are planted in Stripe, so the billing screen and reconciliation have
    something to show; later starts serve that same state and change nothing.

    Returns the settings pointing at it (also exported as ``KEEL_STRIPE_API_BASE`` and
    ``KEEL_STRIPE_API_KEY`` for the flows and child processes), the server (stop it on exit, or
    let the process end) and a one-line summary.
    """
    if uses_real_stripe(settings):
        return settings, None, "Stripe: the real API (KEEL_STRIPE_API_KEY is set)"
    if not embedded and not plant_anywhere:
        return (
            settings,
            None,
            (
                "Stripe: none. KEEL_DATABASE_URL is not the embedded database, so keel dev plants no demo"
                " Stripe data in it (customers linked to its orgs, discrepancies); set KEEL_STRIPE_API_KEY"
                f" to use Stripe, or pass {PLANT_ANYWHERE_FLAG} to plant them there anyway"
            ),
        )
    from api.billing.services import run_sync
    from api.db.engine import run_in_session

    path = state_path(settings)
    fresh = not path.exists()
    server = LocalStripe(StripeStore(seed=1) if fresh else StripeStore.load(path)).start()
    local = settings.with_(stripe_api_key=server.api_key, stripe_api_base=server.url)
    os.environ["KEEL_STRIPE_API_KEY"], os.environ["KEEL_STRIPE_API_BASE"] = server.api_key, server.url
    if fresh:
        seeded = seed_demo(server.store, run_in_session(database_url, demo_orgs))
        synced = run_sync(local, database_url)
        plant_after_sync(server.store, seeded)
        server.store.save(path)
        what = f"seeded; {synced.subscriptions} subscriptions mirrored"
    else:
        what = f"state from {path}"
    return local, server, f"Stripe: local server {server.url} (key {server.api_key}), {what}"


def reconcile_once(settings: Settings, database_url: str) -> str:
    """One reconciliation run (no repairs); its one-line summary. None without a Stripe to read."""
    from api.billing.services import run_reconciliation

    if not settings.stripe_api_key:
        return "no reconciliation (no Stripe to read)"

    result, _ = run_reconciliation(settings, database_url)
    detail = ", ".join(f"{n} {kind}" for kind, n in result.counts().items())
    return f"reconciliation found {len(result.found)} discrepancies" + (f" ({detail})" if detail else "")
