"""Reading ingestion warnings, newest first (by id: UUIDv7, the row's first message)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.errors import NotFound
from api.ingestion.models import ingestion_warnings_table as warnings
from api.ingestion.schemas import IngestionWarningOut
from api.orgs.models import Organization
from api.pagination import decode_cursor

_ANY_ORG: Any = object()


async def list_warnings(
    session: AsyncSession,
    *,
    org_id: uuid.UUID | Any | None,
    reason: str | None,
    cursor: str | None,
    limit: int,
) -> list[IngestionWarningOut]:
    """``limit + 1`` rows; ``org_id`` :data:`_ANY_ORG` lists every org's (and the unresolved ones)."""
    query = select(warnings).order_by(warnings.c.id.desc()).limit(limit + 1)
    if org_id is not _ANY_ORG:
        query = query.where(warnings.c.organization_id == org_id)
    if reason is not None:
        query = query.where(warnings.c.reason == reason)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(warnings.c.id < after)
    rows = (await session.execute(query)).mappings().all()
    return [IngestionWarningOut(**row) for row in rows]


async def staff_list_warnings(
    session: AsyncSession,
    *,
    org_id: uuid.UUID | None,
    unresolved: bool,
    reason: str | None,
    cursor: str | None,
    limit: int,
    actor: Actor,
    ctx: RequestContext,
) -> list[IngestionWarningOut]:
    """Staff's list across organizations; each organization a page shows records
    ``staff.ingestion_warnings_viewed`` in its own audit log (else the platform's)."""
    if org_id is not None and await session.get(Organization, org_id) is None:
        raise NotFound("organization not found")
    target = None if unresolved else (org_id if org_id is not None else _ANY_ORG)
    rows = await list_warnings(session, org_id=target, reason=reason, cursor=cursor, limit=limit)
    page = rows[:limit]
    shown: set[uuid.UUID] = {w.organization_id for w in page if w.organization_id is not None}
    if org_id is not None:
        shown.add(org_id)
    viewed: list[uuid.UUID | None] = [*sorted(shown)] if shown else [None]
    for viewed_org in viewed:
        await audit.record(
            session, action="staff.ingestion_warnings_viewed", actor=actor, ctx=ctx,
            organization_id=viewed_org, resource_type="ingestion_warning", resource_id=viewed_org or "all",
            metadata={
                "filters": {k: v for k, v in
                            {"org_id": str(org_id) if org_id else None, "reason": reason,
                             "unresolved": unresolved or None}.items() if v is not None},
                "warnings_shown": sum(1 for w in page if w.organization_id == viewed_org),
            },
        )  # fmt: skip
    return rows
