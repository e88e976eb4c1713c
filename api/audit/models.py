"""The audit log: its entries, hash-chain heads, prune checkpoints and marks, idempotency keys, and
the signed checkpoints with the public keys that verify them.

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
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    Sequence,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from api.db.base import (
    APP_APPEND_ONLY,
    APP_NO_ACCESS,
    APP_READ_ONLY,
    Base,
    app_privileges,
    db_enum,
    new_id,
    utcnow,
)
from api.db.fence import fenced_nextval
from api.orgs.models import Organization


class ActorType(enum.StrEnum):
    user = "user"
    staff = "staff"
    api_key = "api_key"
    system = "system"
    stripe = "stripe"


class AuditSource(enum.StrEnum):
    """Who wrote an audit entry: Keel itself, or the product through ``POST /v1/audit-logs``."""

    keel = "keel"
    product = "product"


def key_text(length: int) -> String:
    """A key or identifier column, compared as bytes (``COLLATE "C"``, migration 0095): looked up by
    equality and never ordered for a reader, it need not pay the database's collation in every
    index descent."""
    return String(length, collation="C")


audit_log_export_seq = Sequence("audit_log_export_seq", metadata=Base.metadata)


class AuditEntry(Base):
    """One audited action. Append-only (triggers refuse UPDATE, DELETE, TRUNCATE).

    Entries of one organization form a SHA-256 hash chain ordered by ``seq``; entries with no
    organization (platform-level actions) form their own chain.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        UniqueConstraint("chain_key", "seq"),
        Index("ix_audit_log_organization_id_id", "organization_id", "id"),
        Index("ix_audit_log_export_seq_brin", "export_seq", postgresql_using="brin"),
        # "Who did what to this member?" and "what did this user do?" without a walk of the chain.
        Index("ix_audit_log_chain_key_resource", "chain_key", "resource_type", "resource_id", "seq"),
        Index("ix_audit_log_chain_key_actor_id", "chain_key", "actor_id", "seq"),
        # Entries leave only through keel_audit_prune (the owner's SECURITY DEFINER function).
        app_privileges(*APP_APPEND_ONLY),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    #: The organization id as text, or ``platform`` for entries of no organization.
    chain_key: Mapped[str] = mapped_column(key_text(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    #: An existing organization's id: a statement-level trigger checks it once per insert statement
    #: (and takes the key lock a foreign key would), and an organization with entries cannot be
    #: deleted (migration 0095). A foreign key checked it once per row: a fifth of a batch's insert.
    organization_id: Mapped[uuid.UUID | None]
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )
    actor_type: Mapped[ActorType] = mapped_column(db_enum(ActorType, "actor_type"))
    actor_id: Mapped[str | None] = mapped_column(key_text(255))
    actor_name: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(200))
    resource_type: Mapped[str | None] = mapped_column(key_text(100))
    resource_id: Mapped[str | None] = mapped_column(key_text(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[AuditSource] = mapped_column(
        db_enum(AuditSource, "audit_source"), default=AuditSource.keel, server_default=AuditSource.keel.value
    )
    #: ``[{"type", "id", "name"}]`` for product-sent entries; the first also fills resource_type/id.
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default=text("'[]'"))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    #: Global insertion number for the incremental lake export (drawn under the export fence).
    export_seq: Mapped[int] = mapped_column(
        BigInteger, server_default=fenced_nextval(audit_log_export_seq.name)
    )


class AuditChainHead(Base):
    """The newest entry of each chain, kept by a trigger on ``audit_log`` inserts.

    It makes removal from the end of a chain evident (the chain would stop short of its head) and
    lets the database refuse an insert that does not extend its chain by exactly one link.
    """

    __tablename__ = "audit_chain_heads"
    __table_args__ = app_privileges(*APP_READ_ONLY)  # moved only by the (owner's) insert trigger

    chain_key: Mapped[str] = mapped_column(key_text(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_id: Mapped[uuid.UUID]
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """Where a chain was pruned: entries up to ``seq`` were removed; ``hash`` was the hash of entry ``seq``.

    ``verify`` starts from the newest checkpoint of a chain. Append-only, like the log itself.
    """

    __tablename__ = "audit_checkpoints"
    __table_args__ = app_privileges(*APP_READ_ONLY)  # written only by keel_audit_prune

    chain_key: Mapped[str] = mapped_column(key_text(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entry_id: Mapped[uuid.UUID]
    hash: Mapped[str] = mapped_column(String(64))
    removed: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class AuditPruneMark(Base):
    """What ``keel_audit_prune`` is removing in the current transaction: the delete trigger on
    ``audit_log`` lets a row go only when a mark of the deleting transaction covers it. Only the
    owner can write here (the function runs as the owner), so no session setting can fake one.
    """

    __tablename__ = "audit_prune_marks"
    __table_args__ = app_privileges(*APP_NO_ACCESS)

    txid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    chain_key: Mapped[str] = mapped_column(key_text(64))
    through_seq: Mapped[int] = mapped_column(BigInteger)


class AuditIdempotencyKey(Base):
    """The first answer to a ``POST /v1/audit-logs`` carrying an ``Idempotency-Key``, replayed for 24 h."""

    __tablename__ = "audit_idempotency_keys"
    __table_args__ = (Index("ix_audit_idempotency_keys_created_at", "created_at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


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

    chain_key: Mapped[str] = mapped_column(key_text(64), primary_key=True)
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
