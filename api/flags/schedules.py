"""Scheduled flag changes ("go to 25 % Monday 09:00 UTC") and stale flags.

A change is a ``PATCH`` body stored with its time; :func:`apply_due` (run by the webhook worker's
loop and by the ``flag-schedules`` flow, whichever comes first: each change is claimed with
``FOR UPDATE SKIP LOCKED`` and applied once) applies the ones due through the same
``update_flag`` an admin's PATCH uses, audited as ``system`` with the scheduling user named in the
entry's metadata. A patch that no longer applies (a segment deleted since, say) is marked
``failed`` with the reason; the flag is left as it was.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.db.base import utcnow
from api.db.engine import make_sessionmaker, run_with_engine
from api.errors import Conflict, KeelError, NotFound, ValidationFailed
from api.flags.models import FeatureFlag, FlagEvaluationMark, FlagScheduledChange, ScheduleStatus
from api.flags.schemas import FlagUpdate
from api.flags.services import get_flag, update_flag
from api.pagination import decode_cursor

SCHEDULE = "flag_scheduled_change"
#: How often the worker looks for due changes: well within the promised minute.
APPLY_INTERVAL = 20.0
#: A flag at 0 or 100 % left unchanged this long is stale; so is one nobody evaluated this long.
STALE_UNCHANGED = timedelta(days=30)
STALE_UNEVALUATED = timedelta(days=14)


def patch_changes(patch: FlagUpdate) -> dict[str, Any]:
    return {f: getattr(patch, f) for f in patch.__struct_fields__ if getattr(patch, f) is not msgspec.UNSET}


async def schedule_change(
    session: AsyncSession,
    *,
    key: str,
    at: datetime,
    patch: FlagUpdate,
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None,
) -> tuple[FlagScheduledChange, str]:
    flag = await get_flag(session, key)
    changes = patch_changes(patch)
    if not changes:
        raise ValidationFailed("the patch changes nothing", field="patch")
    if at.tzinfo is None:
        raise ValidationFailed("the time needs an offset (e.g. Z)", field="at")
    change = FlagScheduledChange(
        flag_id=flag.id,
        at=at,
        patch=msgspec.to_builtins(patch),
        status=ScheduleStatus.pending,
        created_by=user_id,
    )
    session.add(change)
    await session.flush()
    await audit.record(
        session, action="flag.change_scheduled", actor=actor, ctx=ctx, organization_id=None,
        resource_type=SCHEDULE, resource_id=str(change.id),
        after={"flag": key, "at": at.isoformat(), "patch": change.patch},
    )  # fmt: skip
    return change, key


async def list_schedules(
    session: AsyncSession, *, key: str, cursor: str | None, limit: int
) -> list[FlagScheduledChange]:
    flag = await get_flag(session, key)
    after = decode_cursor(cursor)
    query = (
        select(FlagScheduledChange)
        .where(FlagScheduledChange.flag_id == flag.id)
        .order_by(FlagScheduledChange.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(FlagScheduledChange.id > after)
    return list((await session.scalars(query)).all())


async def cancel_schedule(
    session: AsyncSession, *, key: str, change_id: uuid.UUID, actor: Actor, ctx: RequestContext | None
) -> None:
    flag = await get_flag(session, key)
    change = await session.scalar(
        select(FlagScheduledChange)
        .where(FlagScheduledChange.id == change_id, FlagScheduledChange.flag_id == flag.id)
        .with_for_update()
    )
    if change is None:
        raise NotFound("no such scheduled change for this flag")
    if change.status is not ScheduleStatus.pending:
        raise Conflict(f"the change is already {change.status.value}")
    change.status = ScheduleStatus.canceled
    await session.flush()
    await audit.record(
        session, action="flag.schedule_canceled", actor=actor, ctx=ctx, organization_id=None,
        resource_type=SCHEDULE, resource_id=str(change.id), before={"flag": key, "patch": change.patch},
    )  # fmt: skip


async def apply_due(session: AsyncSession, *, now: datetime | None = None, limit: int = 100) -> int:
    """Apply every pending change whose time has come, oldest first; returns how many were applied.

    Each change runs in a savepoint: one that fails is marked ``failed`` and the others go on.
    """
    now = now or utcnow()
    due = (
        await session.execute(
            select(FlagScheduledChange, FeatureFlag.key)
            .join(FeatureFlag, FeatureFlag.id == FlagScheduledChange.flag_id)
            .where(FlagScheduledChange.status == ScheduleStatus.pending, FlagScheduledChange.at <= now)
            .order_by(FlagScheduledChange.at, FlagScheduledChange.id)
            .limit(limit)
            .with_for_update(of=FlagScheduledChange, skip_locked=True)
        )
    ).all()
    applied = 0
    for change, key in due:
        try:
            async with session.begin_nested():
                patch = msgspec.convert(change.patch, FlagUpdate)
                await update_flag(
                    session, key=key, changes=patch_changes(patch),
                    actor=Actor.system("flag-scheduler"), ctx=None, user_id=None,
                    metadata={"scheduled_change_id": str(change.id), "scheduled_by": str(change.created_by),
                              "scheduled_at": change.at.isoformat()},
                )  # fmt: skip
        except (KeelError, msgspec.ValidationError) as exc:
            change.status, change.error = ScheduleStatus.failed, str(exc)[:1000]
        else:
            change.status, change.applied_at = ScheduleStatus.applied, utcnow()
            applied += 1
    await session.flush()
    return applied


async def apply_due_with(engine: AsyncEngine) -> int:
    """:func:`apply_due` in a committed transaction of its own."""
    async with make_sessionmaker(engine)() as session, session.begin():
        return await apply_due(session)


def run_due_schedules(database_url: str) -> int:
    """The blocking form, for the flow and the CLI."""
    return run_with_engine(database_url, apply_due_with, pool_size=1)


async def stale_flags(
    session: AsyncSession, *, now: datetime | None = None
) -> list[tuple[FeatureFlag, list[str], datetime | None]]:
    """Live flags at 0 or 100 % unchanged for 30 days, or not evaluated for 14 days."""
    now = now or utcnow()
    rows = await session.execute(
        select(FeatureFlag, FlagEvaluationMark.last_evaluated_at)
        .outerjoin(FlagEvaluationMark, FlagEvaluationMark.flag_key == FeatureFlag.key)
        .where(
            FeatureFlag.archived_at.is_(None),
            or_(
                and_(
                    FeatureFlag.rollout_percentage.in_((0, 100)),
                    FeatureFlag.updated_at < now - STALE_UNCHANGED,
                ),
                func.coalesce(FlagEvaluationMark.last_evaluated_at, FeatureFlag.created_at)
                < now - STALE_UNEVALUATED,
            ),
        )
        .order_by(FeatureFlag.key)
    )
    out: list[tuple[FeatureFlag, list[str], datetime | None]] = []
    for flag, last in rows:
        reasons = []
        if flag.rollout_percentage in (0, 100) and flag.updated_at < now - STALE_UNCHANGED:
            reasons.append("full_rollout" if flag.rollout_percentage == 100 else "no_rollout")
        if (last or flag.created_at) < now - STALE_UNEVALUATED:
            reasons.append("not_evaluated")
        out.append((flag, reasons, last))
    return out
