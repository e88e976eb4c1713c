"""Feature flags: definitions, per-org overrides, the version the caches poll.

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
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from api.auth.models import User
from api.db.base import Base, IdMixin, TimestampMixin, db_enum
from api.flags.evaluation import Stickiness
from api.orgs.models import Organization


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
        db_enum(Stickiness, "flag_stickiness"), default=Stickiness.org
    )
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Ordered targeting rules (``api/flags/rules.py`` validates them): a JSON array.
    rules: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    #: ``[{name, weight, value}]``, weights adding up to 1000; empty for a boolean flag.
    variants: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))


class FlagOverride(IdMixin, TimestampMixin, Base):
    """Staff forcing one flag on or off for one organization, with the reason why."""

    __tablename__ = "feature_flag_overrides"
    __table_args__ = (
        UniqueConstraint("flag_id", "organization_id"),
        Index("ix_feature_flag_overrides_organization_id", "organization_id"),
    )

    flag_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("feature_flags.id"))
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id))
    enabled: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(500))
    #: The variant this org is served (a flag with variants); null: the hashed one.
    variant: Mapped[str | None] = mapped_column(String(100))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))


class FlagsVersion(Base):
    """One row: a counter bumped (by trigger) with every flag or override change, polled by the cache."""

    __tablename__ = "flags_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


class FlagSegment(IdMixin, TimestampMixin, Base):
    """A named, reusable set of constraints ("enterprise EU") that flag rules reference by name.

    Writes bump ``flags_version`` like the flag tables (trigger, migration 0030): a segment's
    change changes every rule that uses it.
    """

    __tablename__ = "flag_segments"

    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(String(1000), default="")
    constraints: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))


class ScheduleStatus(enum.StrEnum):
    pending = "pending"
    applied = "applied"
    failed = "failed"
    canceled = "canceled"


class FlagScheduledChange(IdMixin, TimestampMixin, Base):
    """A flag patch to apply at ``at`` (by the flows or the worker), audited as ``system``."""

    __tablename__ = "flag_scheduled_changes"
    __table_args__ = (
        Index("ix_flag_scheduled_changes_due", "at", postgresql_where=text("status = 'pending'")),
    )

    flag_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("feature_flags.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: What ``PATCH /v1/admin/flags/{key}`` would take, validated when scheduled and again when applied.
    patch: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[ScheduleStatus] = mapped_column(
        db_enum(ScheduleStatus, "flag_schedule_status"), default=ScheduleStatus.pending
    )
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(String(1000))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))


class FlagEvaluationMark(Base):
    """When each flag was last evaluated (to the minute), for the stale-flag list.

    Written by each API process at most once a minute per flag (``FlagStore``), never by the
    request itself; no trigger: evaluations do not change the flags.
    """

    __tablename__ = "flag_evaluation_marks"

    flag_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
