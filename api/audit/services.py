"""The one function every audited change writes through, in the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit.chain import GENESIS, entry_hash
from api.auth.context import Actor, RequestContext
from api.db import fence
from api.db.base import new_id
from api.db.models import AuditEntry

PLATFORM_CHAIN = "platform"


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
) -> uuid.UUID:
    """Append one audit entry to its organization's hash chain.

    The chain head is taken under a transaction-scoped advisory lock, so concurrent writers to one
    organization queue up instead of forking the chain; the lock is released at commit or rollback.
    """
    chain_key = str(organization_id) if organization_id else PLATFORM_CHAIN
    await fence.hold_shared(session)  # the row's export_seq is drawn below; see api.db.fence
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(chain_key, 0))))
    head = (
        await session.execute(
            select(AuditEntry.seq, AuditEntry.hash)
            .where(AuditEntry.chain_key == chain_key)
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    ).one_or_none()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS)
    meta = dict(metadata or {})
    if before is not None:
        meta["before"] = before
    if after is not None:
        meta["after"] = after
    # Postgres keeps microseconds; hashing the same precision keeps the chain re-computable.
    occurred_at = datetime.now(UTC)
    entry: dict[str, Any] = {
        "id": new_id(),
        "organization_id": organization_id,
        "seq": seq,
        "occurred_at": occurred_at,
        "actor_type": actor.type.value,
        "actor_id": actor.id,
        "actor_name": actor.name,
        "action": action,
        "resource_type": resource_type,
        "resource_id": str(resource_id) if resource_id is not None else None,
        "metadata": meta,
        "ip": ctx.ip if ctx else None,
        "user_agent": ctx.user_agent if ctx else None,
        "request_id": ctx.request_id if ctx else None,
    }
    digest = entry_hash(
        {**entry, "id": str(entry["id"]), "organization_id": _str(organization_id)}, prev_hash
    )
    row = {k: v for k, v in entry.items() if k != "metadata"}
    await session.execute(
        insert(AuditEntry).values(
            **row, metadata_=meta, chain_key=chain_key, prev_hash=prev_hash, hash=digest
        )
    )
    return entry["id"]


def _str(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None
