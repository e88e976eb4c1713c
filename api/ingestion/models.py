"""Ingestion warnings: one row per (organization, key, reason, UTC day), counting its messages.

The organization is null when a message named none that could be found (staff see those). The
schema changes only through the migrations in ``api/db/migrations/``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Index,
    String,
    Table,
    Text,
    Uuid,
    func,
    literal_column,
)

from api.db.base import APP_DEFAULT_PRIVILEGES, Base, app_privileges

#: The one key of a warning row; the nil UUID stands for "no organization" (NULLs never collide).
NO_ORG = "00000000-0000-0000-0000-000000000000"
WARNING_KEY = f"coalesce(organization_id, '{NO_ORG}'::uuid), token_id, reason, day"

ingestion_warnings_table = Table(
    "ingestion_warnings",
    Base.metadata,
    Column("id", Uuid, primary_key=True),
    Column("organization_id", Uuid),
    Column("token_id", Uuid, nullable=False),
    Column("reason", String(40), nullable=False),
    Column("day", Date, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    #: The latest message's: its id, the rejection's text, its first 2,000 characters.
    Column("message_id", String(128)),
    Column("error", Text, nullable=False),
    Column("sample", Text, nullable=False),
    Index("ix_ingestion_warnings_organization_id_last_seen_at", "organization_id", "last_seen_at"),
    Index("ix_ingestion_warnings_last_seen_at", "last_seen_at"),
    **app_privileges(*APP_DEFAULT_PRIVILEGES),
)

Index(
    "uq_ingestion_warnings_key",
    func.coalesce(ingestion_warnings_table.c.organization_id, literal_column(f"'{NO_ORG}'::uuid")),
    ingestion_warnings_table.c.token_id,
    ingestion_warnings_table.c.reason,
    ingestion_warnings_table.c.day,
    unique=True,
)
