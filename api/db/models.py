"""Every table Keel owns. The schema changes only through the migrations in ``migrations/``."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Sequence,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import (
    APP_APPEND_ONLY,
    APP_NO_ACCESS,
    APP_READ_ONLY,
    Base,
    IdMixin,
    TimestampMixin,
    app_privileges,
    new_id,
    utcnow,
)
from api.db.fence import fenced_nextval
from api.emails import email_key
from api.flags.evaluation import Stickiness


class PlatformRole(enum.StrEnum):
    admin = "admin"
    support = "support"


class UserStatus(enum.StrEnum):
    active = "active"
    invited = "invited"
    disabled = "disabled"


class OrgStatus(enum.StrEnum):
    active = "active"
    suspended = "suspended"


class OrgRole(enum.StrEnum):
    owner = "owner"
    admin = "admin"
    billing = "billing"
    member = "member"
    viewer = "viewer"


class MembershipStatus(enum.StrEnum):
    invited = "invited"
    active = "active"
    removed = "removed"


class TokenKind(enum.StrEnum):
    user = "user"
    org_ingest = "org_ingest"
    platform_ingest = "platform_ingest"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its first attempt
    delivering = "delivering"  # leased by a worker, attempt in flight
    succeeded = "succeeded"
    failed = "failed"  # the last attempt failed; retried at next_attempt_at (none: parked)
    exhausted = "exhausted"  # out of attempts


class InboundStatus(enum.StrEnum):
    received = "received"
    processed = "processed"
    failed = "failed"
    ignored = "ignored"


class InboundOutcome(enum.StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    rejected = "rejected"


class ActorType(enum.StrEnum):
    user = "user"
    staff = "staff"
    api_key = "api_key"
    system = "system"
    stripe = "stripe"


class AuditSource(enum.StrEnum):
    """Who wrote an audit entry: Keel itself, or the product through ``POST /v1/audit-logs``."""

    keel = "keel"
    product = "product"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as text with a CHECK constraint: adding a value later is a one-line migration.
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=32, validate_strings=True)


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"
    #: One user per address, as :func:`api.emails.email_key` compares them (NFKC, then case).
    __table_args__ = (Index("uq_users_email_key", email_key(text("email")), unique=True),)

    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    platform_role: Mapped[PlatformRole | None] = mapped_column(_enum(PlatformRole, "platform_role"))
    status: Mapped[UserStatus] = mapped_column(_enum(UserStatus, "user_status"), default=UserStatus.active)


class Organization(IdMixin, TimestampMixin, Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[OrgStatus] = mapped_column(_enum(OrgStatus, "org_status"), default=OrgStatus.active)
    suspended_reason: Mapped[str | None] = mapped_column(String(500))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Membership(IdMixin, TimestampMixin, Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("organization_id", "user_id"),
        Index("ix_memberships_user_id", "user_id"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    role: Mapped[OrgRole] = mapped_column(_enum(OrgRole, "org_role"))
    status: Mapped[MembershipStatus] = mapped_column(
        _enum(MembershipStatus, "membership_status"), default=MembershipStatus.invited
    )
    invited_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class ApiToken(IdMixin, TimestampMixin, Base):
    """User tokens, org ingest keys and platform ingest keys. Only a SHA-256 of the secret is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint(
            "(kind = 'user' AND user_id IS NOT NULL AND organization_id IS NULL)"
            " OR (kind = 'org_ingest' AND organization_id IS NOT NULL)"
            " OR (kind = 'platform_ingest' AND organization_id IS NULL)",
            name="owner_matches_kind",
        ),
        Index("ix_api_tokens_user_id", "user_id"),
        Index("ix_api_tokens_organization_id", "organization_id"),
    )

    kind: Mapped[TokenKind] = mapped_column(_enum(TokenKind, "token_kind"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


audit_log_export_seq = Sequence("audit_log_export_seq", metadata=Base.metadata)


class AuditEntry(Base):
    """One audited action. Append-only (triggers refuse UPDATE, DELETE, TRUNCATE).

    Entries of one organization form a SHA-256 hash chain ordered by ``seq``; entries with no
    organization (platform-level actions) form their own chain.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        UniqueConstraint("chain_key", "seq"),
        Index("ix_audit_log_organization_id_id", "organization_id", "id"),
        Index("ix_audit_log_export_seq_brin", "export_seq", postgresql_using="brin"),
        # "Who did what to this member?" and "what did this user do?" without a walk of the chain.
        Index("ix_audit_log_chain_key_resource", "chain_key", "resource_type", "resource_id", "seq"),
        Index("ix_audit_log_chain_key_actor_id", "chain_key", "actor_id", "seq"),
        # Entries leave only through keel_audit_prune (the owner's SECURITY DEFINER function).
        app_privileges(*APP_APPEND_ONLY),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    #: The organization id as text, or ``platform`` for entries of no organization.
    chain_key: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    actor_type: Mapped[ActorType] = mapped_column(_enum(ActorType, "actor_type"))
    actor_id: Mapped[str | None] = mapped_column(String(255))
    actor_name: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(200))
    resource_type: Mapped[str | None] = mapped_column(String(100))
    resource_id: Mapped[str | None] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[AuditSource] = mapped_column(
        _enum(AuditSource, "audit_source"), default=AuditSource.keel, server_default=AuditSource.keel.value
    )
    #: ``[{"type", "id", "name"}]`` for product-sent entries; the first also fills resource_type/id.
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default=text("'[]'"))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: Global insertion number for the incremental lake export (drawn under the export fence).
    export_seq: Mapped[int] = mapped_column(
        BigInteger, server_default=fenced_nextval(audit_log_export_seq.name)
    )


# Events are written by one bulk statement per batch and read by the export flow in ingest order,
# so they are a Core table (no ORM identity, no primary key to maintain): partitioned by day of
# receipt, with only a BRIN index on ingest_seq for the exporter. Dedupe lives in event_keys.
events_ingest_seq = Sequence("events_ingest_seq", metadata=Base.metadata)

events_table = Table(
    "events",
    Base.metadata,
    Column(
        "ingest_seq",
        BigInteger,
        server_default=fenced_nextval(events_ingest_seq.name),
        nullable=False,
    ),
    Column("organization_id", Uuid, nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("event", String(200), nullable=False),
    Column("user_id", String(255)),
    Column("anonymous_id", String(255)),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("properties", JSONB, nullable=False),
    Column("context", JSONB, nullable=False),
    Index("ix_events_ingest_seq_brin", "ingest_seq", postgresql_using="brin"),
    postgresql_partition_by="RANGE (received_at)",
    # Partitions come and go only through the owner's functions (keel_ensure_event_partitions,
    # keel_drop_event_partition).
    **app_privileges(*APP_APPEND_ONLY),
)

#: (organization, message_id) is stored once for as long as its event stays in Postgres.
event_keys_table = Table(
    "event_keys",
    Base.metadata,
    Column("organization_id", Uuid, primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_event_keys_received_at_brin", "received_at", postgresql_using="brin"),
    **app_privileges(*APP_APPEND_ONLY),
)


class FeatureFlag(IdMixin, TimestampMixin, Base):
    """A flag definition, managed by platform admins. Archived, never deleted: its history stays.

    Every write to this table (or to the overrides) bumps ``flags_version`` and notifies
    ``keel_flags`` in the same transaction (triggers made by migration 0004), which is how every
    API process learns to refresh its in-process copy.
    """

    __tablename__ = "feature_flags"
    __table_args__ = (
        CheckConstraint("rollout_percentage BETWEEN 0 AND 100", name="rollout_percentage_range"),
    )

    #: Also the Unleash ``groupId`` of the rollout hash: never changes once created.
    key: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(String(1000), default="")
    #: The kill switch: false turns the flag off for everyone, overrides included.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    rollout_percentage: Mapped[int] = mapped_column(SmallInteger, default=0)
    stickiness: Mapped[Stickiness] = mapped_column(
        _enum(Stickiness, "flag_stickiness"), default=Stickiness.org
    )
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class FlagOverride(IdMixin, TimestampMixin, Base):
    """Staff forcing one flag on or off for one organization, with the reason why."""

    __tablename__ = "feature_flag_overrides"
    __table_args__ = (
        UniqueConstraint("flag_id", "organization_id"),
        Index("ix_feature_flag_overrides_organization_id", "organization_id"),
    )

    flag_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("feature_flags.id"))
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    enabled: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class FlagsVersion(Base):
    """One row: a counter bumped (by trigger) with every flag or override change, polled by the cache."""

    __tablename__ = "flags_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


class AuditChainHead(Base):
    """The newest entry of each chain, kept by a trigger on ``audit_log`` inserts.

    It makes removal from the end of a chain evident (the chain would stop short of its head) and
    lets the database refuse an insert that does not extend its chain by exactly one link.
    """

    __tablename__ = "audit_chain_heads"
    __table_args__ = app_privileges(*APP_READ_ONLY)  # moved only by the (owner's) insert trigger

    chain_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_id: Mapped[uuid.UUID]
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """Where a chain was pruned: entries up to ``seq`` were removed; ``hash`` was the hash of entry ``seq``.

    ``verify`` starts from the newest checkpoint of a chain. Append-only, like the log itself.
    """

    __tablename__ = "audit_checkpoints"
    __table_args__ = app_privileges(*APP_READ_ONLY)  # written only by keel_audit_prune

    chain_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entry_id: Mapped[uuid.UUID]
    hash: Mapped[str] = mapped_column(String(64))
    removed: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class AuditPruneMark(Base):
    """What ``keel_audit_prune`` is removing in the current transaction: the delete trigger on
    ``audit_log`` lets a row go only when a mark of the deleting transaction covers it. Only the
    owner can write here (the function runs as the owner), so no session setting can fake one.
    """

    __tablename__ = "audit_prune_marks"
    __table_args__ = app_privileges(*APP_NO_ACCESS)

    txid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    chain_key: Mapped[str] = mapped_column(String(64))
    through_seq: Mapped[int] = mapped_column(BigInteger)


class KeelSetting(Base):
    """One row of settings the database itself enforces, written by ``keel db upgrade`` as the
    owner (the application role may read it, never change it)."""

    __tablename__ = "keel_settings"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),
                      CheckConstraint("audit_retention_days >= 1", name="audit_retention_days_positive"),
                      app_privileges(*APP_READ_ONLY))  # fmt: skip

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    #: KEEL_AUDIT_RETENTION_DAYS: keel_audit_prune refuses entries recorded more recently.
    audit_retention_days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class ExportProgress(Base):
    """How far the lake export of each append-only table has got (its watermark), recorded by the
    exporter after the lake holds the rows; pruning and partition drops never go past it."""

    __tablename__ = "export_progress"
    __table_args__ = app_privileges("SELECT", "INSERT", "UPDATE")

    table_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


# --- Webhooks ------------------------------------------------------------------------------------
# Export to the lake (pipelines): messages and attempts are append-only (by created_at / seq);
# deliveries, endpoints and inbound events change, and are exported by updated_at with overlap.


class WebhookEndpoint(IdMixin, TimestampMixin, Base):
    """A customer's receiver. The secret is kept in clear: every delivery is signed with it."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_organization_id_id", "organization_id", "id"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(500), default="")
    #: Exact types or prefixes like ``member.*``; empty means every type.
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    secret: Mapped[str] = mapped_column(String(128))
    #: After a rotation the old secret keeps signing beside the new one until this time.
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Start of the current run of failed attempts (none since the last success).
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookMessage(Base):
    """One event an organization (or Keel itself) published; immutable."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        UniqueConstraint("organization_id", "message_id"),
        Index("ix_webhook_messages_created_at_brin", "created_at", postgresql_using="brin"),
        app_privileges(*APP_APPEND_ONLY),  # append-only: a message is never changed once accepted
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    #: The publisher's idempotency key (the id itself when none was given).
    message_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class AuditIdempotencyKey(Base):
    """The first answer to a ``POST /v1/audit-logs`` carrying an ``Idempotency-Key``, replayed for 24 h."""

    __tablename__ = "audit_idempotency_keys"
    __table_args__ = (Index("ix_audit_idempotency_keys_created_at", "created_at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


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

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    stripe_subscription_id: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    stripe_product_id: Mapped[str | None] = mapped_column(String(255))
    #: The price's lookup key, else the product's name, else the price id.
    plan: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[SubscriptionStatus] = mapped_column(_enum(SubscriptionStatus, "subscription_status"))
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


class ReconciliationRun(IdMixin, Base):
    """One reconciliation of Stripe, the mirror and product use."""

    __tablename__ = "billing_reconciliation_runs"

    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[ReconciliationRunStatus] = mapped_column(
        _enum(ReconciliationRunStatus, "reconciliation_run_status")
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
    kind: Mapped[DiscrepancyKind] = mapped_column(_enum(DiscrepancyKind, "discrepancy_kind"))
    severity: Mapped[Severity] = mapped_column(_enum(Severity, "discrepancy_severity"))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    #: Stripe's value (the truth), or the limit a use went past.
    expected: Mapped[str | None] = mapped_column(Text)
    #: The mirror's value, or the use measured.
    actual: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)
    export_seq: Mapped[int] = mapped_column(
        BigInteger, server_default=fenced_nextval(billing_discrepancies_export_seq.name)
    )


class WebhookDelivery(IdMixin, TimestampMixin, Base):
    """One message to one endpoint, until it succeeds or runs out of attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # What the workers claim: due rows only, so the index stays small however long the history.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'failed') AND next_attempt_at IS NOT NULL"),
        ),
        Index("ix_webhook_deliveries_lease", "leased_until", postgresql_where=text("status = 'delivering'")),
        Index("ix_webhook_deliveries_organization_id_id", "organization_id", "id"),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_webhook_message_id", "webhook_message_id"),
        Index("ix_webhook_deliveries_updated_at_brin", "updated_at", postgresql_using="brin"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id"))
    webhook_message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_messages.id"))
    event_type: Mapped[str] = mapped_column(String(200))
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.pending
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    succeeded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    leased_by: Mapped[str | None] = mapped_column(String(100))


webhook_attempts_seq = Sequence("webhook_attempts_seq_seq", metadata=Base.metadata)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: append-only, written by the workers in batches."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        Index("ix_webhook_attempts_delivery_id_attempt", "delivery_id", "attempt_number"),
        Index("ix_webhook_attempts_endpoint_id_started_at", "endpoint_id", "started_at"),
        Index("ix_webhook_attempts_seq_brin", "seq", postgresql_using="brin"),
        app_privileges(*APP_APPEND_ONLY),  # append-only: exported to the lake by sequence
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    #: Increases with every insert: the lake export's watermark.
    seq: Mapped[int] = mapped_column(BigInteger, server_default=fenced_nextval(webhook_attempts_seq.name))
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempt_number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: The first 4 KB of the answer.
    response_body: Mapped[str | None] = mapped_column(Text)
    #: timeout, dns, tls, refused, connection, protocol, ssrf_blocked, invalid_url, worker_lost
    error_class: Mapped[str | None] = mapped_column(String(32))
    error_detail: Mapped[str | None] = mapped_column(String(500))


class InboundEvent(IdMixin, Base):
    """An event received from a provider (Stripe), stored once by the provider's event id."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index("ix_inbound_events_updated_at_brin", "updated_at", postgresql_using="brin"),
    )

    source: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(200))
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The provider's own time for the event (Stripe's ``created``): the order to apply events in.
    event_created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[InboundStatus] = mapped_column(
        _enum(InboundStatus, "inbound_status"), default=InboundStatus.received
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class InboundRequest(IdMixin, Base):
    """Every request to an inbound webhook route, accepted or not: what support reads first."""

    __tablename__ = "inbound_webhook_requests"
    __table_args__ = (
        Index("ix_inbound_webhook_requests_received_at_brin", "received_at", postgresql_using="brin"),
    )

    source: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    outcome: Mapped[InboundOutcome] = mapped_column(_enum(InboundOutcome, "inbound_outcome"))
    inbound_event_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("inbound_events.id"))
    external_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(String(500))
    body_sha256: Mapped[str] = mapped_column(String(64))
    body_bytes: Mapped[int] = mapped_column(Integer)
    ip: Mapped[str | None] = mapped_column(INET)
    request_id: Mapped[str | None] = mapped_column(String(128))
