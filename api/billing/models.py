"""The billing mirror of Stripe and what reconciliations found.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Sequence, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import APP_APPEND_ONLY, Base, IdMixin, TimestampMixin, app_privileges, db_enum, utcnow
from api.db.fence import fenced_nextval
from api.orgs.models import Organization


class SubscriptionStatus(enum.StrEnum):
    """Stripe's subscription statuses, as Stripe spells them."""

    trialing = "trialing"
    active = "active"
    past_due = "past_due"
    canceled = "canceled"
    unpaid = "unpaid"
    incomplete = "incomplete"
    incomplete_expired = "incomplete_expired"
    paused = "paused"


class Subscription(IdMixin, TimestampMixin, Base):
    """The billing mirror: one Stripe subscription, pointing at the organization that pays for it.

    Written only from Stripe's state (a full sync, an inbound event, a reconciliation repair);
    ``stripe_state_at`` is when Stripe reported the state held, and no older report overwrites it.
    """

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_organization_id", "organization_id"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id))
    stripe_subscription_id: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    stripe_product_id: Mapped[str | None] = mapped_column(String(255))
    #: The price's lookup key, else the product's name, else the price id.
    plan: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[SubscriptionStatus] = mapped_column(db_enum(SubscriptionStatus, "subscription_status"))
    seats: Mapped[int] = mapped_column(BigInteger)
    #: Minor units (cents) per seat per interval.
    unit_amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    interval: Mapped[str | None] = mapped_column(String(16))
    current_period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The renewal date.
    current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trial_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When Stripe reported the state held: the event's ``created``, or the start of the sync's read.
    stripe_state_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The event that last changed the row (None when a sync or a repair did).
    stripe_event_id: Mapped[str | None] = mapped_column(String(255))
    #: When Keel last confirmed this row against Stripe (sync, event or repair).
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReconciliationRunStatus(enum.StrEnum):
    completed = "completed"
    failed = "failed"


class UsageSource(enum.StrEnum):
    """Where a reconciliation run's monthly active users came from (a text column, not a DB enum)."""

    warehouse = "warehouse"
    postgres = "postgres"
    none = "none"  # a run that failed before reading usage


class ReconciliationRun(IdMixin, Base):
    """One reconciliation of Stripe, the mirror and product use."""

    __tablename__ = "billing_reconciliation_runs"

    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[ReconciliationRunStatus] = mapped_column(
        db_enum(ReconciliationRunStatus, "reconciliation_run_status")
    )
    repair: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Where monthly active users came from: ``warehouse`` or ``postgres`` (events of the last 30 days).
    usage_source: Mapped[str] = mapped_column(String(32))
    stripe_customers: Mapped[int] = mapped_column(BigInteger, default=0)
    stripe_subscriptions: Mapped[int] = mapped_column(BigInteger, default=0)
    mirror_subscriptions: Mapped[int] = mapped_column(BigInteger, default=0)
    discrepancy_count: Mapped[int] = mapped_column(BigInteger, default=0)
    repaired_count: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Stripe objects that could not be read: ``[{"object", "id", "error"}]``.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)


class DiscrepancyKind(enum.StrEnum):
    missing_in_mirror = "missing_in_mirror"
    missing_in_stripe = "missing_in_stripe"
    status_mismatch = "status_mismatch"
    plan_mismatch = "plan_mismatch"
    seat_count_mismatch = "seat_count_mismatch"
    over_seat_limit = "over_seat_limit"
    unpaid_active_usage = "unpaid_active_usage"
    stale_mirror = "stale_mirror"
    unlinked_customer = "unlinked_customer"


class Severity(enum.StrEnum):
    high = "high"
    medium = "medium"
    low = "low"


billing_discrepancies_export_seq = Sequence("billing_discrepancies_export_seq", metadata=Base.metadata)


class BillingDiscrepancy(IdMixin, Base):
    """One difference a reconciliation found. Append-only (exported to the lake by ``export_seq``)."""

    __tablename__ = "billing_discrepancies"
    __table_args__ = (
        Index("ix_billing_discrepancies_run_id", "run_id"),
        Index("ix_billing_discrepancies_export_seq_brin", "export_seq", postgresql_using="brin"),
        app_privileges(*APP_APPEND_ONLY),  # append-only: exported to the lake by sequence
    )

    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("billing_reconciliation_runs.id"))
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[DiscrepancyKind] = mapped_column(db_enum(DiscrepancyKind, "discrepancy_kind"))
    severity: Mapped[Severity] = mapped_column(db_enum(Severity, "discrepancy_severity"))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(Organization.id))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    #: Stripe's value (the truth), or the limit a use went past.
    expected: Mapped[str | None] = mapped_column(Text)
    #: The mirror's value, or the use measured.
    actual: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)
    export_seq: Mapped[int] = mapped_column(
        BigInteger,
        server_default=fenced_nextval(billing_discrepancies_export_seq.name),
    )
