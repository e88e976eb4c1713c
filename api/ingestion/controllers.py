from __future__ import annotations

import uuid
from typing import Annotated, Literal

from litestar import Controller, get
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission, StaffPermission
from api.ingestion import queries
from api.ingestion.schemas import IngestionWarningPage
from api.pagination import Cursor, Limit, page_of

ReasonFilter = Annotated[
    Literal[
        "invalid_field", "oversized", "timestamp_out_of_range", "unknown_org", "suspended_org", "foreign_org"
    ]
    | None,
    Parameter(default=None, description="Only this reason."),
]
_KEPT = "Kept 30 days (the `retention` flow purges older rows)."


class OrgIngestionWarningController(Controller):
    path = "/v1/orgs/{org_id:uuid}/ingestion-warnings"
    tags = ["events"]

    @get(
        "/",
        summary="Messages the ingest path refused, counted per key, reason and day (any member)",
        description="Events and Segment calls rejected (invalid field, oversized, timestamp out of range, "
        "another organization named...), newest first, each row with the latest message's text as a "
        f"sample. {_KEPT} Recording a warning never blocks a batch's valid messages.",
    )
    async def list_warnings(
        self,
        org_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        cursor: Cursor,
        limit: Limit,
        reason: ReasonFilter,
    ) -> IngestionWarningPage:
        await auth.org_access(db, principal, org_id, Permission.read_org)
        rows = await queries.list_warnings(db, org_id=org_id, reason=reason, cursor=cursor, limit=limit)
        return page_of(IngestionWarningPage, rows, limit, lambda row: row)


class AdminIngestionWarningController(Controller):
    path = "/v1/admin/ingestion-warnings"
    tags = ["admin"]

    @get(
        "/",
        summary="Every organization's ingestion warnings, and those naming no organization (staff; audited)",
        description=f"Newest first; `org_id` for one organization, `unresolved=true` for the messages that "
        f"named no organization that exists. {_KEPT} Each organization a page shows records "
        "`staff.ingestion_warnings_viewed` in its own audit log.",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def list_warnings(
        self,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        cursor: Cursor,
        limit: Limit,
        reason: ReasonFilter,
        org_id: Annotated[uuid.UUID | None, Parameter(default=None, description="One organization only.")],
        unresolved: Annotated[
            bool, Parameter(default=False, description="Only the messages that named no organization.")
        ],
    ) -> IngestionWarningPage:
        rows = await queries.staff_list_warnings(
            db, org_id=org_id, unresolved=unresolved, reason=reason, cursor=cursor, limit=limit,
            actor=Actor.of(principal, as_staff=True), ctx=ctx,
        )  # fmt: skip
        return page_of(IngestionWarningPage, rows, limit, lambda row: row)
