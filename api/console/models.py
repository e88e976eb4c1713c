"""The console's sign-in state: one-time sign-in links and browser sessions.

Only SHA-256 digests of the secrets are stored, as for API tokens. The schema changes only through
the migrations in ``api/db/migrations/``; :mod:`api.models` registers these tables.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from api.auth.models import User
from api.db.base import Base, IdMixin, TimestampMixin


class ConsoleLoginLink(IdMixin, TimestampMixin, Base):
    """A one-time sign-in link (``keel console login``): usable once, before ``expires_at``."""

    __tablename__ = "console_login_links"
    __table_args__ = (Index("ix_console_login_links_user_id", "user_id"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(IdMixin, TimestampMixin, Base):
    """A signed-in browser: the cookie carries the secret, the row its digest. Ends at sign-out
    (``revoked_at``), after ``idle`` without a request (``last_seen_at``), at ``expires_at``, and
    as soon as its user is disabled or loses the platform role (checked on every request)."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_user_id", "user_id"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    #: How the session began: ``link`` or ``token``.
    method: Mapped[str] = mapped_column(String(16))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(1000))
