"""Webhooks: endpoints, messages, deliveries and attempts out; inbound events and requests in.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Sequence,
    String,
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
    Base,
    IdMixin,
    TimestampMixin,
    app_privileges,
    db_enum,
    new_id,
    utcnow,
)
from api.db.fence import fenced_nextval
from api.orgs.models import Organization

# Export to the lake (pipelines): messages and attempts are append-only (by created_at / seq);
# deliveries, endpoints and inbound events change, and are exported by updated_at with overlap.


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


# Export to the lake (pipelines): messages and attempts are append-only (by created_at / seq);
# deliveries, endpoints and inbound events change, and are exported by updated_at with overlap.


class WebhookEndpoint(IdMixin, TimestampMixin, Base):
    """A customer's receiver. The secret is kept in clear: every delivery is signed with it."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_organization_id_id", "organization_id", "id"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id))
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
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id))
    #: The publisher's idempotency key (the id itself when none was given).
    message_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
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

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id"))
    webhook_message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_messages.id"))
    event_type: Mapped[str] = mapped_column(String(200))
    status: Mapped[DeliveryStatus] = mapped_column(
        db_enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.pending
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
        db_enum(InboundStatus, "inbound_status"), default=InboundStatus.received
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
    outcome: Mapped[InboundOutcome] = mapped_column(db_enum(InboundOutcome, "inbound_outcome"))
    inbound_event_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("inbound_events.id"))
    external_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(String(500))
    body_sha256: Mapped[str] = mapped_column(String(64))
    body_bytes: Mapped[int] = mapped_column(Integer)
    ip: Mapped[str | None] = mapped_column(INET)
    request_id: Mapped[str | None] = mapped_column(String(128))
