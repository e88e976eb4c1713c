"""Organizations: the tenants.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, FetchedValue, Index, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import Base, IdMixin, TimestampMixin, app_privileges, db_enum


class OrgStatus(enum.StrEnum):
    active = "active"
    suspended = "suspended"


class Organization(IdMixin, TimestampMixin, Base):
    __tablename__ = "organizations"
    # Never deleted, only softly (deleted_at): the lake exports the table by version, and a
    # deleted row would have none (migration 0070).
    __table_args__ = (
        Index("ix_organizations_lake_version", "lake_version"),
        app_privileges("SELECT", "INSERT", "UPDATE"),
    )

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    status: Mapped[OrgStatus] = mapped_column(db_enum(OrgStatus, "org_status"), default=OrgStatus.active)
    suspended_reason: Mapped[str | None] = mapped_column(String(500))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The vendor's own account id for the org (unique when set): how a platform write key names it.
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    #: The org's latest traits (``group`` calls): one JSON object.
    traits: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))
    #: Set by the database on every change (a trigger, under the export fence: migration 0070),
    #: never by Keel: what the lake's export reads by (``warehouse.lake_tables.ByVersion``).
    lake_version: Mapped[int] = mapped_column(
        BigInteger, server_default=FetchedValue(), server_onupdate=FetchedValue()
    )
