"""Segments: named, reusable constraint sets that flag rules reference, managed by platform admins.

Each write is audited (``flag.segment_*``) and bumps ``flags_version`` (trigger, migration 0030),
so every rule naming the segment answers with its new constraints at the caches' next refresh.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.errors import Conflict, NotFound
from api.flags.models import FeatureFlag, FlagSegment
from api.flags.rules import check_constraints
from api.flags.schemas import ConstraintIn
from api.pagination import decode_cursor

SEGMENT = "flag_segment"


def _snapshot(segment: FlagSegment) -> dict[str, Any]:
    return {
        "name": segment.name,
        "description": segment.description,
        "constraints": list(segment.constraints),
    }


async def get_segment(session: AsyncSession, name: str, *, for_update: bool = False) -> FlagSegment:
    query = select(FlagSegment).where(FlagSegment.name == name)
    segment = await session.scalar(query.with_for_update() if for_update else query)
    if segment is None:
        raise NotFound(f"no segment named {name!r}")
    return segment


async def list_segments(session: AsyncSession, *, cursor: str | None, limit: int) -> list[FlagSegment]:
    after = decode_cursor(cursor)
    query = select(FlagSegment).order_by(FlagSegment.id).limit(limit + 1)
    if after is not None:
        query = query.where(FlagSegment.id > after)
    return list((await session.scalars(query)).all())


async def flags_using(session: AsyncSession, name: str) -> list[str]:
    """Keys of the flags (archived ones too) whose rules name the segment."""
    flags = await session.execute(select(FeatureFlag.key, FeatureFlag.rules).order_by(FeatureFlag.key))
    return [key for key, rules in flags if any(name in (r.get("segments") or []) for r in rules or [])]


async def create_segment(
    session: AsyncSession,
    *,
    name: str,
    description: str,
    constraints: Sequence[ConstraintIn],
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None,
) -> FlagSegment:
    stored = check_constraints(constraints, "constraints")
    if await session.scalar(select(FlagSegment.id).where(FlagSegment.name == name)) is not None:
        raise Conflict(
            f"a segment named {name!r} already exists", errors=[{"field": "name", "message": "taken"}]
        )
    segment = FlagSegment(
        name=name, description=description, constraints=stored, created_by=user_id, updated_by=user_id
    )
    session.add(segment)
    await session.flush()
    await audit.record(
        session, action="flag.segment_created", actor=actor, ctx=ctx, organization_id=None,
        resource_type=SEGMENT, resource_id=name, after=_snapshot(segment),
    )  # fmt: skip
    return segment


async def update_segment(
    session: AsyncSession,
    *,
    name: str,
    description: str | None,
    constraints: Sequence[ConstraintIn] | None,
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None,
) -> FlagSegment:
    segment = await get_segment(session, name, for_update=True)
    before = _snapshot(segment)
    if description is not None:
        segment.description = description
    if constraints is not None:
        segment.constraints = check_constraints(constraints, "constraints")
    if _snapshot(segment) == before:
        return segment
    segment.updated_by = user_id
    await session.flush()
    await audit.record(
        session, action="flag.segment_updated", actor=actor, ctx=ctx, organization_id=None,
        resource_type=SEGMENT, resource_id=name, before=before, after=_snapshot(segment),
    )  # fmt: skip
    return segment


async def delete_segment(
    session: AsyncSession, *, name: str, actor: Actor, ctx: RequestContext | None
) -> None:
    """Delete a segment no rule names (409 listing the flags that still do)."""
    segment = await get_segment(session, name, for_update=True)
    users = await flags_using(session, name)
    if users:
        raise Conflict(f"the segment {name!r} is used by the rules of: {', '.join(users)}")
    before = _snapshot(segment)
    await session.delete(segment)
    await session.flush()
    await audit.record(
        session, action="flag.segment_deleted", actor=actor, ctx=ctx, organization_id=None,
        resource_type=SEGMENT, resource_id=name, before=before,
    )  # fmt: skip
