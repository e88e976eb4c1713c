"""The ``audit_streams`` table: one destination an organization's audit log is delivered to."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import Base, IdMixin, TimestampMixin, db_enum
from api.orgs.models import Organization


class StreamType(enum.StrEnum):
    https = "https"
    splunk_hec = "splunk_hec"
    datadog = "datadog"
    s3 = "s3"


class StreamFormat(enum.StrEnum):
    keel = "keel"
    ocsf = "ocsf"


class StreamStatus(enum.StrEnum):
    active = "active"
    paused = "paused"  # by its owners; the backlog waits (and holds back pruning)
    disabled = "disabled"  # failed past the retry window, with the reason; holds nothing back


class AuditStream(IdMixin, TimestampMixin, Base):
    """A destination of an organization's audit entries and how far it has got (``delivered_seq``,
    and ``delivered_checkpoint_seq`` for the chain's signed checkpoints).

    Credentials are stored AES-GCM encrypted (:mod:`api.audit.streams.secrets`) and shown once.
    One worker at a time holds a stream (``leased_by``/``leased_until``): the order is the chain's.
    """

    __tablename__ = "audit_streams"
    __table_args__ = (
        UniqueConstraint("organization_id", "name"),
        # The worker's claim: due active streams.
        Index("ix_audit_streams_due", "next_attempt_at", postgresql_where=text("status = 'active'")),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id))
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[StreamType] = mapped_column(db_enum(StreamType, "audit_stream_type"))
    url: Mapped[str] = mapped_column(Text)
    format: Mapped[StreamFormat] = mapped_column(db_enum(StreamFormat, "audit_stream_format"))
    #: The destination's credential (HEC token, Datadog API key, S3 ``key_id:secret``), encrypted.
    token_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: The Standard Webhooks signing secret of an ``https`` stream, encrypted.
    secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[StreamStatus] = mapped_column(
        db_enum(StreamStatus, "audit_stream_status"), default=StreamStatus.active
    )
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Every entry of the chain up to this seq has been accepted by the destination.
    delivered_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: Every signed checkpoint of the chain up to this seq has been accepted by the destination.
    delivered_checkpoint_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Start of the current run of failures (None while it succeeds).
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Consecutive failed attempts (the backoff's exponent).
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
    leased_by: Mapped[str | None] = mapped_column(String(120))
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
