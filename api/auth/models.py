"""Who a user is: the users table and its platform roles (tokens live in api/tokens).

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

import enum

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import Base, IdMixin, TimestampMixin, db_enum
from api.emails import email_key


class PlatformRole(enum.StrEnum):
    admin = "admin"
    support = "support"


class UserStatus(enum.StrEnum):
    active = "active"
    invited = "invited"
    disabled = "disabled"


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"
    #: One user per address, as :func:`api.emails.email_key` compares them (NFKC, then case).
    __table_args__ = (Index("uq_users_email_key", email_key(text("email")), unique=True),)

    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    platform_role: Mapped[PlatformRole | None] = mapped_column(db_enum(PlatformRole, "platform_role"))
    status: Mapped[UserStatus] = mapped_column(db_enum(UserStatus, "user_status"), default=UserStatus.active)
