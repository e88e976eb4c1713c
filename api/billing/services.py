"""Billing services: the billing screen (Postgres only), and the sync and reconciliation runs
that the CLI and the Prefect flows call."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from api import rules as api_rules
from api.billing import reconcile as rec
from api.billing.models import BillingDiscrepancy, ReconciliationRun, Subscription
from api.billing.schemas import BillingOut, DiscrepancyOut, ReconciliationOut, RunOut
from api.billing.stripe_api import StripeUnavailable, make_client, read_stripe
from api.db.engine import make_sessionmaker, run_in_session, run_with_engine
from api.members.models import Membership
from api.members.seats import ACTIVE_MEMBER
from api.settings import Settings
from warehouse import rules

#: ``ORDER BY`` clause: the current subscription first (warehouse.rules.SUBSCRIPTION_RANK, the
#: rule int_current_subscriptions applies; the mirror's "created" is when it first held the subscription).
CURRENT_FIRST = text(
    api_rules.render(
        rules.SUBSCRIPTION_RANK,
        Subscription.status,
        Subscription.created_at,
        Subscription.stripe_subscription_id,
    )
    + " DESC"
)


async def current_plans(session: AsyncSession, org_ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """Each org's current subscription's plan (the billing screen's subscription), in one read."""
    if not org_ids:
        return {}
    rows = await session.execute(
        select(Subscription.organization_id, Subscription.plan)
        .where(Subscription.organization_id.in_(org_ids))
        .distinct(Subscription.organization_id)
        .order_by(Subscription.organization_id, CURRENT_FIRST)
    )
    return {org_id: plan for org_id, plan in rows.all()}


async def billing_screen(session: AsyncSession, org_id: uuid.UUID) -> BillingOut:
    """The org's current subscription (warehouse.rules) and its seats used (its active members)."""
    seats_used = await session.scalar(
        select(func.count()).where(Membership.organization_id == org_id, ACTIVE_MEMBER)
    )
    sub = await session.scalar(
        select(Subscription).where(Subscription.organization_id == org_id).order_by(CURRENT_FIRST).limit(1)
    )
    if sub is None:
        return BillingOut(
            plan=None, status=None, seats=None, seats_used=seats_used or 0, renewal_date=None, trial_end=None,
            cancel_at_period_end=None, amount=None, currency=None, interval=None, last_synced_at=None,
            stripe_subscription_id=None,
        )  # fmt: skip
    return BillingOut(
        plan=sub.plan, status=sub.status, seats=sub.seats, seats_used=seats_used or 0,
        renewal_date=sub.current_period_end, trial_end=sub.trial_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        amount=sub.unit_amount * sub.seats if sub.unit_amount is not None else None,
        currency=sub.currency, interval=sub.interval, last_synced_at=sub.synced_at,
        stripe_subscription_id=sub.stripe_subscription_id,
    )  # fmt: skip


def run_out(run: ReconciliationRun) -> RunOut:
    return RunOut(
        id=run.id, status=run.status, started_at=run.started_at, finished_at=run.finished_at,
        repair=run.repair, usage_source=run.usage_source, stripe_customers=run.stripe_customers,
        stripe_subscriptions=run.stripe_subscriptions, mirror_subscriptions=run.mirror_subscriptions,
        discrepancy_count=run.discrepancy_count, repaired_count=run.repaired_count, errors=run.errors,
    )  # fmt: skip


def discrepancy_out(d: BillingDiscrepancy) -> DiscrepancyOut:
    return DiscrepancyOut(
        id=d.id, kind=d.kind, severity=d.severity, organization_id=d.organization_id,
        stripe_customer_id=d.stripe_customer_id, stripe_subscription_id=d.stripe_subscription_id,
        expected=d.expected, actual=d.actual, detail=d.detail, repaired=d.repaired,
    )  # fmt: skip


async def latest_reconciliation(session: AsyncSession) -> ReconciliationOut:
    run, found, failure = await rec.latest_runs(session)
    by_kind: dict[str, int] = {}
    for d in found:
        by_kind[d.kind.value] = by_kind.get(d.kind.value, 0) + 1
    return ReconciliationOut(
        run=run_out(run) if run else None,
        by_kind=dict(sorted(by_kind.items())),
        discrepancies=[discrepancy_out(d) for d in found],
        latest_failure=run_out(failure) if failure else None,
    )


# -- runs (blocking; for the CLI and the flows) --------------------------------------------------

Progress = Callable[[str, int], None]


def run_sync(settings: Settings, database_url: str, *, progress: Progress | None = None) -> rec.SyncResult:
    """Read Stripe whole, then mirror it (in batches of customers, a transaction each).
    Raises StripeUnavailable when Stripe cannot be read: then nothing is written."""
    snapshot = read_stripe(make_client(settings), progress=progress)
    return run_with_engine(
        database_url, lambda engine: rec.sync_in_batches(make_sessionmaker(engine), snapshot)
    )


def run_reconciliation(
    settings: Settings,
    database_url: str,
    *,
    repair: bool = False,
    stale_after: timedelta = rec.DEFAULT_STALE_AFTER,
    progress: Progress | None = None,
) -> tuple[rec.RunResult, float]:
    """Read Stripe whole, then compare, repair (if asked) and record the run (see rec.reconcile).

    Returns the result and the seconds spent reading Stripe. When Stripe cannot be read, a failed
    run is recorded (nothing else) and StripeUnavailable is raised.
    """
    try:
        snapshot = read_stripe(make_client(settings), progress=progress)
    except StripeUnavailable as exc:
        error = str(exc)
        run_in_session(database_url, lambda s: rec.record_failure(s, repair=repair, error=error))
        raise
    result = run_with_engine(
        database_url,
        lambda engine: rec.reconcile(
            make_sessionmaker(engine),
            snapshot,
            repair=repair,
            warehouse_path=settings.resolved_warehouse_path,
            stale_after=stale_after,
        ),
    )
    return result, snapshot.seconds
