"""Staff routes for targeting: segments, scheduled changes and the stale-flag list.

Platform admins change them; support reads them (``auth.staff_only``), as for flag definitions.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_204_NO_CONTENT
from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import StaffPermission
from api.flags import schedules, segments
from api.flags.models import FlagScheduledChange, FlagSegment
from api.flags.schemas import (
    KEY_PATTERN,
    ScheduleCreate,
    ScheduleOut,
    SchedulePage,
    SegmentCreate,
    SegmentOut,
    SegmentPage,
    SegmentUpdate,
    StaleFlagOut,
    StaleFlagsOut,
)
from api.pagination import Cursor, Limit, page_of

PathKey = Annotated[str, Parameter(pattern=KEY_PATTERN, max_length=100, description="The flag's key.")]
PathName = Annotated[str, Parameter(pattern=KEY_PATTERN, max_length=100, description="The segment's name.")]


def segment_out(segment: FlagSegment) -> SegmentOut:
    return SegmentOut(
        id=segment.id, name=segment.name, description=segment.description,
        constraints=list(segment.constraints), created_at=segment.created_at, updated_at=segment.updated_at,
    )  # fmt: skip


def schedule_out(change: FlagScheduledChange, key: str) -> ScheduleOut:
    return ScheduleOut(
        id=change.id, flag_key=key, at=change.at, patch=dict(change.patch), status=change.status.value,
        applied_at=change.applied_at, error=change.error, created_by=change.created_by,
        created_at=change.created_at,
    )  # fmt: skip


class SegmentAdminController(Controller):
    """Named constraint sets that flag rules reference (``rules[].segments``)."""

    path = "/v1/admin/segments"
    tags = ["flags"]

    @get("/", summary="List segments (staff)", opt=auth.staff_only(StaffPermission.read))
    async def list_segments(
        self, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> SegmentPage:
        found = await segments.list_segments(db, cursor=cursor, limit=limit)
        return page_of(SegmentPage, found, limit, segment_out)

    @post("/", summary="Create a segment (admin)", opt=auth.staff_only(StaffPermission.administer))
    async def create(
        self, data: SegmentCreate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> SegmentOut:
        segment = await segments.create_segment(
            db, name=data.name, description=data.description, constraints=data.constraints,
            actor=Actor.of(principal, as_staff=True), ctx=ctx, user_id=principal.user_id,
        )  # fmt: skip
        return segment_out(segment)

    @get("/{name:str}", summary="One segment (staff)", opt=auth.staff_only(StaffPermission.read))
    async def read(self, name: PathName, db: AsyncSession, principal: Principal) -> SegmentOut:
        return segment_out(await segments.get_segment(db, name))

    @patch("/{name:str}", summary="Change a segment (admin)", opt=auth.staff_only(StaffPermission.administer))
    async def update(
        self, name: PathName, data: SegmentUpdate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> SegmentOut:
        segment = await segments.update_segment(
            db, name=name, description=None if data.description is UNSET else data.description,
            constraints=None if data.constraints is UNSET else data.constraints,
            actor=Actor.of(principal, as_staff=True), ctx=ctx, user_id=principal.user_id,
        )  # fmt: skip
        return segment_out(segment)

    @delete(
        "/{name:str}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a segment no rule uses (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def remove(
        self, name: PathName, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> None:
        await segments.delete_segment(db, name=name, actor=Actor.of(principal, as_staff=True), ctx=ctx)


class FlagScheduleController(Controller):
    """Flag changes scheduled ahead, applied within a minute of their time by the worker or the flows."""

    path = "/v1/admin/flags/{key:str}/schedules"
    tags = ["flags"]

    @get("/", summary="A flag's scheduled changes (staff)", opt=auth.staff_only(StaffPermission.read))
    async def list_schedules(
        self, key: PathKey, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> SchedulePage:
        found = await schedules.list_schedules(db, key=key, cursor=cursor, limit=limit)
        return page_of(SchedulePage, found, limit, lambda c: schedule_out(c, key))

    @post("/", summary="Schedule a change of a flag (admin)", opt=auth.staff_only(StaffPermission.administer))
    async def create(
        self, key: PathKey, data: ScheduleCreate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> ScheduleOut:
        change, flag_key = await schedules.schedule_change(
            db, key=key, at=data.at, patch=data.patch, actor=Actor.of(principal, as_staff=True), ctx=ctx,
            user_id=principal.user_id,
        )  # fmt: skip
        return schedule_out(change, flag_key)

    @delete(
        "/{change_id:uuid}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Cancel a pending scheduled change (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def cancel(
        self, key: PathKey, change_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> None:
        await schedules.cancel_schedule(
            db, key=key, change_id=change_id, actor=Actor.of(principal, as_staff=True), ctx=ctx
        )


class StaleFlagController(Controller):
    path = "/v1/admin/stale-flags"
    tags = ["flags"]

    @get(
        "/",
        summary="Flags at 0 or 100 % unchanged for 30 days, or not evaluated for 14 days (staff)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def list_stale(self, db: AsyncSession, principal: Principal) -> StaleFlagsOut:
        found = await schedules.stale_flags(db)
        return StaleFlagsOut(
            items=[
                StaleFlagOut(
                    key=f.key,
                    reasons=reasons,
                    rollout_percentage=f.rollout_percentage,
                    updated_at=f.updated_at,
                    last_evaluated_at=last,
                )
                for f, reasons, last in found
            ]
        )
