"""The one function every audited change writes through, in the caller's transaction; and pruning."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit.chain import GENESIS, entry_hash, normalize_ip
from api.audit.models import AuditChainHead, AuditEntry, AuditSource
from api.auth.context import Actor, RequestContext
from api.db.base import new_id

PLATFORM_CHAIN = "platform"
#: Python prints floats from 1e16 up with an exponent; Postgres keeps JSONB numbers as exact
#: decimals and hands ``1e+16`` back as the integer 10000000000000000, which would hash differently.
MAX_JSON_FLOAT = 1e16


def chain_key_of(organization_id: uuid.UUID | str | None) -> str:
    return str(organization_id) if organization_id else PLATFORM_CHAIN


def chain_lock(chain_key: str) -> Any:
    """The transaction-scoped advisory lock every writer of ``chain_key`` takes (and keel_audit_prune)."""
    return select(func.pg_advisory_xact_lock(func.hashtextextended(chain_key, 0)))


def jsonb_safe(value: Any, path: str = "metadata") -> Any:
    """``value`` as Postgres will hand it back from JSONB, or ``ValueError`` naming what it cannot keep.

    The chain hashes what was written, and ``verify`` hashes what is read: they must be equal.
    """
    if isinstance(value, dict):
        if any("\x00" in str(k) for k in value):
            raise ValueError(f"{path}: keys cannot contain NUL characters")
        return {str(k): jsonb_safe(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonb_safe(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= MAX_JSON_FLOAT:
            raise ValueError(f"{path}: numbers must be finite and below 1e16 in magnitude")
        return value + 0.0  # -0.0 becomes 0.0, as JSONB stores it
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{path}: text cannot contain NUL characters")
    return value


async def record(
    session: AsyncSession,
    *,
    action: str,
    actor: Actor,
    ctx: RequestContext | None,
    organization_id: uuid.UUID | None,
    resource_type: str | None = None,
    resource_id: str | uuid.UUID | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    targets: list[dict[str, Any]] | None = None,
    source: AuditSource = AuditSource.keel,
) -> AuditEntry:
    """Append one audit entry to its organization's hash chain.

    The chain head is taken under a transaction-scoped advisory lock, so concurrent writers to one
    organization queue up instead of forking the chain; the lock is released at commit or rollback.
    (A trigger also refuses any insert that does not extend the head, whoever writes it.)
    ``occurred_at`` defaults to now; product-sent entries carry their own. Returns the stored entry.
    """
    chain_key = chain_key_of(organization_id)
    await session.execute(chain_lock(chain_key))
    head = (
        await session.execute(
            select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.chain_key == chain_key)
        )
    ).one_or_none()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
    meta = dict(metadata or {})
    if before is not None:
        meta["before"] = before
    if after is not None:
        meta["after"] = after
    meta = jsonb_safe(meta)
    # Postgres keeps microseconds; hashing the same precision keeps the chain re-computable.
    when = (occurred_at or datetime.now(UTC)).astimezone(UTC)
    entry: dict[str, Any] = {
        "id": new_id(),
        "organization_id": organization_id,
        "seq": seq,
        "occurred_at": when,
        "actor_type": actor.type.value,
        "actor_id": actor.id,
        "actor_name": actor.name,
        "action": action,
        "resource_type": resource_type,
        "resource_id": str(resource_id) if resource_id is not None else None,
        "metadata": meta,
        "ip": normalize_ip(ctx.ip) if ctx else None,
        "user_agent": ctx.user_agent if ctx else None,
        "request_id": ctx.request_id if ctx else None,
        "source": source.value,
        "targets": jsonb_safe(list(targets or []), "targets"),
    }
    digest = entry_hash(
        {**entry, "id": str(entry["id"]), "organization_id": _str(organization_id)}, prev_hash
    )
    row = {k: v for k, v in entry.items() if k != "metadata"}
    # RETURNING hands back the stored row in the same round trip: the chain lock is held until
    # commit, so every round trip saved here is one less for the writers queued behind it.
    stored = await session.scalar(
        insert(AuditEntry)
        .values(**row, metadata_=meta, chain_key=chain_key, prev_hash=prev_hash, hash=digest)
        .returning(AuditEntry)
    )
    assert stored is not None
    return stored


def _str(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Pruned:
    chain_key: str
    #: The last removed entry (now the chain's checkpoint), or None when nothing was old enough.
    through_seq: int | None
    removed: int


async def prune_audit(session: AsyncSession, *, chain_key: str, before: datetime) -> Pruned:
    """Remove the oldest entries of one chain: the longest run from its start recorded before ``before``,
    within what Postgres allows (``keel_audit_prune_limit``: entries recorded at least
    KEEL_AUDIT_RETENTION_DAYS ago, as ``keel db upgrade`` configured it, that the lake holds).

    Goes through ``keel_audit_prune`` (the owner's SECURITY DEFINER function, the only way an entry
    leaves), which records a checkpoint (the last removed entry's seq and hash) in the same
    transaction, so ``verify`` still passes afterwards. Runs in the caller's transaction.
    """
    await session.execute(chain_lock(chain_key))
    limit = await session.scalar(text("SELECT keel_audit_prune_limit(:k)"), {"k": chain_key})
    first_kept = await session.scalar(
        select(AuditEntry.seq)
        .where(AuditEntry.chain_key == chain_key, AuditEntry.recorded_at >= before)
        .order_by(AuditEntry.seq)
        .limit(1)
    )
    query = select(func.max(AuditEntry.seq)).where(AuditEntry.chain_key == chain_key, AuditEntry.seq <= limit)
    if first_kept is not None:
        query = query.where(AuditEntry.seq < first_kept)
    through = await session.scalar(query)
    if through is None:
        return Pruned(chain_key=chain_key, through_seq=None, removed=0)
    removed = await session.scalar(
        text("SELECT keel_audit_prune(:chain_key, :seq)"), {"chain_key": chain_key, "seq": through}
    )
    return Pruned(chain_key=chain_key, through_seq=through, removed=int(removed or 0))
