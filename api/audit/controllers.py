from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, MediaType, Response, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import batch, queries
from api.audit import verify as chain_verify
from api.audit.export import MEDIA_TYPES as EXPORT_MEDIA_TYPES
from api.audit.export import export_chunks
from api.audit.ingest import IDEMPOTENCY_HEADER
from api.audit.models import ActorType
from api.audit.queries import ActionFilter, AuditFilters, SeqCursor
from api.audit.rows import snapshot
from api.audit.schemas import (
    AuditLogCreate,
    AuditLogOut,
    AuditLogPage,
    BrokenEntry,
    ChainPoint,
    ExportFormat,
    VerifyOut,
)
from api.audit.services import chain_key_of
from api.audit.views import entry_out
from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission, StaffPermission
from api.errors import KeelError
from api.openapi import MEDIA_TYPES
from api.pagination import Cursor, Limit

Since = Annotated[datetime | None, Parameter(default=None, description="Entries that occurred at or after.")]
Until = Annotated[datetime | None, Parameter(default=None, description="Entries that occurred before.")]


def provide_filters(
    action: ActionFilter,
    since: Since,
    until: Until,
    actor_type: Annotated[ActorType | None, Parameter(default=None)],
    actor_id: Annotated[str | None, Parameter(default=None, min_length=1, max_length=255)],
    resource_type: Annotated[str | None, Parameter(default=None, min_length=1, max_length=100)],
    resource_id: Annotated[str | None, Parameter(default=None, min_length=1, max_length=255)],
) -> AuditFilters:
    return AuditFilters(
        action=action, actor_type=actor_type, actor_id=actor_id, resource_type=resource_type,
        resource_id=resource_id, since=since, until=until,
    )  # fmt: skip


FILTERS = {"filters": Provide(provide_filters, sync_to_thread=False)}


class AuditIngestController(Controller):
    path = "/v1/audit-logs"
    tags = ["audit log"]

    @post(
        "/",
        status_code=201,
        summary="Record an audit entry sent by the product (org ingest key, or platform key naming org_id)",
        description="With an `Idempotency-Key` header, a repeat within 24 hours answers the first answer "
        "again (with `Idempotent-Replayed: true`); the same key with a different body is 409.",
    )
    async def create(
        self,
        data: AuditLogCreate,
        principal: Principal,
        ctx: RequestContext,
        state: State,
        idempotency_key: Annotated[
            str | None,
            Parameter(
                header=IDEMPOTENCY_HEADER,
                default=None,
                pattern=r"^[\x21-\x7e]{1,255}$",
                description="1-255 printable ASCII characters, unique per logical entry.",
            ),
        ],
    ) -> Response[AuditLogOut]:  # the body is an encoded AuditLogOut: a replay answers the stored bytes
        # No session: the org's liveness is checked in the (group) transaction that writes the entry.
        org_id = auth.ingest_target(principal, data.org_id)
        prepared = batch.prepare(
            data,
            key=chain_key_of(org_id),
            request_id=ctx.request_id,
            idempotency_key=idempotency_key,
            now=datetime.now(UTC),
        )
        (answer,) = await state.audit_appender.append(org_id, [prepared])
        if isinstance(answer, KeelError):
            raise answer
        return Response(
            content=answer.body,  # type: ignore[arg-type]
            status_code=answer.status_code,
            media_type=MediaType.JSON,
            headers={"Idempotent-Replayed": "true"} if answer.replayed else None,
        )


class OrgAuditController(Controller):
    path = "/v1/orgs/{org_id:uuid}/audit-logs"
    tags = ["audit log"]

    @get("/", summary="Search an organization's audit log, newest first (owner, admin)", dependencies=FILTERS)
    async def list_entries(
        self,
        org_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        filters: AuditFilters,
        cursor: SeqCursor,
        limit: Limit,
    ) -> AuditLogPage:
        await auth.org_access(db, principal, org_id, Permission.read_audit)
        rows, following = await queries.org_entries(
            db, org_id=org_id, filters=filters, cursor=cursor, limit=limit
        )
        return AuditLogPage(items=[entry_out(e) for e in rows], next_cursor=following)

    @get("/verify", summary="Walk the organization's hash chain end to end (owner, admin)")
    async def verify(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, state: State
    ) -> VerifyOut:
        await auth.org_access(db, principal, org_id, Permission.read_audit)
        await db.commit()  # the walk reads on its own snapshot; free this connection meanwhile
        report = await chain_verify.verify(
            state.engine, chain_key=chain_key_of(org_id), split=chain_verify.Split.of(state.settings)
        )
        chain = report.chains[0]
        broken = chain.broken
        return VerifyOut(
            ok=chain.ok,
            entries_checked=chain.entries_checked,
            first_broken=None
            if broken is None
            else BrokenEntry(id=broken.id, seq=broken.seq, reason=broken.reason),
            head=ChainPoint(seq=chain.head.seq, hash=chain.head.hash) if chain.head else None,
            checkpoint=ChainPoint(seq=chain.checkpoint.seq, hash=chain.checkpoint.hash)
            if chain.checkpoint
            else None,
        )

    @get(
        "/export",
        summary="Stream the audit log as JSON Lines or CSV, each entry with its hashes (owner, admin)",
        opt={MEDIA_TYPES: list(EXPORT_MEDIA_TYPES.values())},
    )
    async def export(
        self,
        org_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        state: State,
        since: Since,
        until: Until,
        fmt: Annotated[ExportFormat, Parameter(query="format", default=ExportFormat.jsonl)],
        checkpoints: Annotated[
            bool,
            Parameter(
                default=False,
                description="JSON Lines only: end with the chain's signed checkpoints, one "
                '`{"checkpoint": {seq, hash, entries, kid, signed_at, jws}}` line each.',
            ),
        ],
    ) -> Stream:
        await auth.org_access(db, principal, org_id, Permission.read_audit)
        filters = AuditFilters(since=since, until=until)
        await db.commit()
        engine = state.engine

        async def body() -> AsyncIterator[bytes]:
            async with snapshot(engine) as conn:
                async for piece, _ in export_chunks(
                    conn,
                    chain_key=chain_key_of(org_id),
                    fmt=fmt,
                    since=filters.since,
                    until=filters.until,
                    checkpoints=checkpoints,
                ):
                    yield piece

        return Stream(
            body(),
            media_type=EXPORT_MEDIA_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="audit-log-{org_id}.{fmt.value}"'},
        )


class AdminAuditController(Controller):
    path = "/v1/admin/audit-logs"
    tags = ["admin"]

    @get(
        "/",
        summary="Search every organization's audit log (staff; the read is itself audited)",
        dependencies=FILTERS,
        opt=auth.staff_only(StaffPermission.read),
    )
    async def list_all(
        self,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        filters: AuditFilters,
        cursor: Cursor,
        limit: Limit,
        org_id: Annotated[uuid.UUID | None, Parameter(default=None, description="One organization only.")],
    ) -> AuditLogPage:
        rows, following = await queries.all_entries(
            db, org_id=org_id, filters=filters, cursor=cursor, limit=limit,
            actor=Actor.of(principal, as_staff=True), ctx=ctx,
        )  # fmt: skip
        return AuditLogPage(items=[entry_out(e) for e in rows], next_cursor=following)
