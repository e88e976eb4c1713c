from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from api.billing.models import DiscrepancyKind, ReconciliationRunStatus, Severity, SubscriptionStatus


class BillingOut(msgspec.Struct):
    """The billing screen, from the mirror alone. With no subscription, every subscription field is null."""

    plan: str | None
    status: SubscriptionStatus | None
    seats: int | None
    #: Active members of the organization now.
    seats_used: int
    #: The end of the current billing period.
    renewal_date: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool | None
    #: Per billing interval, in the currency's minor units (unit amount x seats).
    amount: int | None
    currency: str | None
    interval: str | None
    #: When the mirror was last confirmed against Stripe.
    last_synced_at: datetime | None
    stripe_subscription_id: str | None


class DiscrepancyOut(msgspec.Struct):
    id: uuid.UUID
    kind: DiscrepancyKind
    severity: Severity
    organization_id: uuid.UUID | None
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    expected: str | None
    actual: str | None
    detail: str
    repaired: bool


class RunOut(msgspec.Struct):
    id: uuid.UUID
    status: ReconciliationRunStatus
    started_at: datetime
    finished_at: datetime | None
    repair: bool
    usage_source: str
    stripe_customers: int
    stripe_subscriptions: int
    mirror_subscriptions: int
    discrepancy_count: int
    repaired_count: int
    errors: list[dict[str, Any]]


class ReconciliationOut(msgspec.Struct):
    """The latest completed run and its discrepancies (null before the first run), and a failed
    run newer than it, if any."""

    run: RunOut | None
    by_kind: dict[str, int]
    discrepancies: list[DiscrepancyOut]
    latest_failure: RunOut | None
