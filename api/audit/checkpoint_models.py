"""Signed checkpoints of the audit hash chains and the public keys that verify them.

Kept apart from ``api.audit.models`` (the log itself); :mod:`api.models` gathers both.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import APP_APPEND_ONLY, Base, app_privileges, utcnow
from api.orgs.models import Organization


class AuditSigningKey(Base):
    """A public key that signed (or signs) checkpoints, as a JWK. Never removed: a checkpoint
    signed before a rotation stays verifiable from the JWKS. The private key is never stored here."""

    __tablename__ = "audit_signing_keys"
    __table_args__ = app_privileges(*APP_APPEND_ONLY)

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The public JWK (``kty``, ``crv``, ``x``, ``kid``, ``alg``, ``use``).
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class AuditSignedCheckpoint(Base):
    """A chain's head at one moment, signed as a JWS (RFC 7515, EdDSA) over
    ``{"chain", "seq", "hash", "entries", "iat"}``. One per chain position; append-only."""

    __tablename__ = "audit_signed_checkpoints"
    __table_args__ = app_privileges(*APP_APPEND_ONLY)

    chain_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(Organization.id))
    hash: Mapped[str] = mapped_column(String(64))
    #: How many entries the chain held when signed (seq minus those pruned before).
    entries: Mapped[int] = mapped_column(BigInteger)
    kid: Mapped[str] = mapped_column(ForeignKey(AuditSigningKey.kid))
    jws: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
