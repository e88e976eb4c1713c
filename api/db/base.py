"""Declarative base: UUIDv7 keys, UTC timestamps, a fixed constraint naming convention."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

import uuid_utils
from sqlalchemy import DateTime, Enum, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable names make Alembic diffs stable and error messages recognizable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: What the application role (``KEEL_DATABASE_URL``) may do to a table unless the table says
#: otherwise in ``info={"app_privileges": ...}`` (see :func:`app_privileges` and api/db/roles.py).
#: Never TRUNCATE, REFERENCES or TRIGGER; the owner (``KEEL_ADMIN_DATABASE_URL``) keeps those.
APP_DEFAULT_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
#: Append-only tables: the application adds rows and reads them, never changes or removes one.
APP_APPEND_ONLY = ("SELECT", "INSERT")
#: Tables only the owner's SECURITY DEFINER functions (or triggers) write.
APP_READ_ONLY = ("SELECT",)
#: Tables the application role cannot touch at all.
APP_NO_ACCESS: tuple[str, ...] = ()


def app_privileges(*privileges: str) -> dict[str, Any]:
    """``Table(..., **app_privileges(...))`` / ``__table_args__ = (..., app_privileges(...))``."""
    return {"info": {"app_privileges": privileges}}


def db_enum(cls: type[enum.StrEnum], name: str) -> Enum:
    """A Python enum column, stored as text with a CHECK constraint: adding a value later is a
    one-line migration."""
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=32, validate_strings=True)


def new_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so keyset pagination by id is pagination by creation time."""
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)


def new_id_text() -> str:
    """:func:`new_id` as its text, without the ``uuid.UUID`` in between (where only the text is used)."""
    return str(uuid_utils.uuid7())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )
