"""Feature flags: definitions, per-org overrides, the version the caches poll.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

import uuid
from datetime import datetime

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
)
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
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))


class FlagsVersion(Base):
    """One row: a counter bumped (by trigger) with every flag or override change, polled by the cache."""

    __tablename__ = "flags_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)
