"""User tokens, org ingest keys and platform ingest keys.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, DateTime, ForeignKey, Index, LargeBinary, String, Text, false
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from api.auth.models import User
from api.db.base import Base, IdMixin, TimestampMixin, db_enum
from api.orgs.models import Organization


class TokenKind(enum.StrEnum):
    user = "user"
    org_ingest = "org_ingest"
    platform_ingest = "platform_ingest"


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
        CheckConstraint(
            "kind <> 'user' OR (NOT publishable AND allowed_origins IS NULL)", name="publishable_is_ingest"
        ),
        Index("ix_api_tokens_user_id", "user_id"),
        Index("ix_api_tokens_organization_id", "organization_id"),
    )

    kind: Mapped[TokenKind] = mapped_column(db_enum(TokenKind, "token_kind"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(Organization.id))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: A publishable key (``keel_pub_...``, safe to put in a web page): an ingest key that may only
    #: write events and evaluate flags (the routes marked ``api.auth.services.BROWSER``).
    publishable: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    #: The browser origins an ingest key is accepted from (``Origin`` header); NULL lists none, so a
    #: secret key is refused from every browser and a publishable one accepted from any.
    allowed_origins: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
