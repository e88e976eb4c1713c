"""``/v1/orgs/{org_id}/audit-streams``: an organization's audit log streams (owners and admins)."""

from __future__ import annotations

import uuid

from litestar import Controller, delete, get, patch, post
from litestar.datastructures import State
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit.streams import services
from api.audit.streams.delivery import test_stream
from api.audit.streams.models import AuditStream
from api.audit.streams.schemas import (
    StreamCreate,
    StreamCreated,
    StreamOut,
    StreamPage,
    StreamTestOut,
    StreamUpdate,
)
from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission
from api.pagination import Cursor, Limit, page_of


def stream_out(s: AuditStream, lag: tuple[int, float]) -> StreamOut:
    return StreamOut(
        id=s.id,
        organization_id=s.organization_id,
        name=s.name,
        type=s.type,
        url=s.url,
        format=s.format,
        status=s.status,
        has_token=s.token_ciphertext is not None,
        disabled_reason=s.disabled_reason,
        disabled_at=s.disabled_at,
        delivered_seq=s.delivered_seq,
        delivered_checkpoint_seq=s.delivered_checkpoint_seq,
        lag_entries=lag[0],
        lag_seconds=lag[1],
        last_success_at=s.last_success_at,
        last_error=s.last_error,
        last_error_at=s.last_error_at,
        failing_since=s.failing_since,
        next_attempt_at=s.next_attempt_at,
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


async def _out(db: AsyncSession, s: AuditStream) -> StreamOut:
    await db.refresh(s)
    return stream_out(s, (await services.lags(db, [s]))[s.id])


async def _set_paused(
    db: AsyncSession,
    principal: Principal,
    ctx: RequestContext,
    org_id: uuid.UUID,
    stream_id: uuid.UUID,
    *,
    paused: bool,
) -> StreamOut:
    """Pause or resume: the same access, audited change and answer either way."""
    await auth.org_access(db, principal, org_id, Permission.manage_org)
    stream = await services.set_paused(
        db, org_id=org_id, stream_id=stream_id, paused=paused, actor=Actor.of(principal), ctx=ctx
    )
    return await _out(db, stream)


class AuditStreamController(Controller):
    path = "/v1/orgs/{org_id:uuid}/audit-streams"
    tags = ["audit"]

    @get("/", summary="List the organization's audit log streams, with their lag (owner, admin)")
    async def list_streams(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> StreamPage:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        rows = await services.list_streams(db, org_id=org_id, cursor=cursor, limit=limit)
        lags = await services.lags(db, rows[:limit])
        return page_of(StreamPage, rows, limit, lambda s: stream_out(s, lags[s.id]))

    @post(
        "/", summary="Add a stream (https, splunk_hec, datadog, s3); an https stream's secret is shown once"
    )
    async def create(
        self,
        org_id: uuid.UUID,
        data: StreamCreate,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        state: State,
    ) -> StreamCreated:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        stream, secret = await services.create_stream(
            db, org_id=org_id, data=data, settings=state.settings, actor=Actor.of(principal), ctx=ctx
        )
        out = await _out(db, stream)
        return StreamCreated(**{f: getattr(out, f) for f in out.__struct_fields__}, secret=secret)

    @get(
        "/{stream_id:uuid}", summary="Get a stream: status, lag (entries and seconds), last success and error"
    )
    async def read(
        self, org_id: uuid.UUID, stream_id: uuid.UUID, db: AsyncSession, principal: Principal
    ) -> StreamOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        return await _out(db, await services.get_stream(db, org_id=org_id, stream_id=stream_id))

    @patch("/{stream_id:uuid}", summary="Change a stream's name, URL, token or format")
    async def update(
        self,
        org_id: uuid.UUID,
        stream_id: uuid.UUID,
        data: StreamUpdate,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        state: State,
    ) -> StreamOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        stream = await services.update_stream(
            db,
            org_id=org_id,
            stream_id=stream_id,
            data=data,
            settings=state.settings,
            actor=Actor.of(principal),
            ctx=ctx,
        )
        return await _out(db, stream)

    @post("/{stream_id:uuid}/pause", status_code=HTTP_200_OK, summary="Pause a stream (its backlog waits)")
    async def pause(
        self,
        org_id: uuid.UUID,
        stream_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> StreamOut:
        return await _set_paused(db, principal, ctx, org_id, stream_id, paused=True)

    @post("/{stream_id:uuid}/resume", status_code=HTTP_200_OK, summary="Resume a paused or disabled stream")
    async def resume(
        self,
        org_id: uuid.UUID,
        stream_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> StreamOut:
        return await _set_paused(db, principal, ctx, org_id, stream_id, paused=False)

    @post(
        "/{stream_id:uuid}/test", status_code=HTTP_200_OK, summary="Send one test item to the destination now"
    )
    async def test(
        self, org_id: uuid.UUID, stream_id: uuid.UUID, db: AsyncSession, principal: Principal, state: State
    ) -> StreamTestOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        stream = await services.get_stream(db, org_id=org_id, stream_id=stream_id)
        sent = await test_stream(state.settings, stream)
        return StreamTestOut(ok=sent.ok, status_code=sent.status_code, error=sent.error)

    @delete("/{stream_id:uuid}", status_code=HTTP_204_NO_CONTENT, summary="Delete a stream")
    async def remove(
        self,
        org_id: uuid.UUID,
        stream_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> None:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        await services.delete_stream(
            db, org_id=org_id, stream_id=stream_id, actor=Actor.of(principal), ctx=ctx
        )
