from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any, Literal

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from api.analytics import services
from api.analytics.schemas import ActivityOut, HealthOut
from api.audit import services as audit
from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission, StaffPermission
from api.errors import NotFound
from api.orgs.models import Organization


class AnalyticsController(Controller):
    path = "/v1/orgs/{org_id:uuid}/analytics"
    tags = ["analytics"]

    @get(
        "/activity",
        summary="An organization's daily activity and active users, from the warehouse",
        description=(
            "`to` defaults to the warehouse's last day and `from` to 29 days before `to`; `from` must be on"
            f" or before `to`, and one request covers at most {services.MAX_RANGE_DAYS} days (422 otherwise)."
        ),
    )
    async def activity(
        self,
        org_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        state: State,
        start: Annotated[date | None, Parameter(query="from", default=None, description="First day (UTC).")],
        end: Annotated[date | None, Parameter(query="to", default=None, description="Last day (UTC).")],
    ) -> ActivityOut:
        await auth.org_access(db, principal, org_id, Permission.read_org)
        return await services.activity(state.settings.resolved_warehouse_path, org_id, start, end)


class AdminAnalyticsController(Controller):
    path = "/v1/admin"
    tags = ["admin"]

    @get(
        "/orgs/{org_id:uuid}/health",
        summary="One organization's health score and reasons (staff; audited)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def org_health(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext, state: State
    ) -> HealthOut:
        if await db.get(Organization, org_id) is None:
            raise NotFound("organization not found")
        result = await services.health(state.settings.resolved_warehouse_path, org_id)
        await audit.record(
            db, action="staff.health_viewed", actor=Actor.of(principal, as_staff=True), ctx=ctx,
            organization_id=org_id, resource_type="organization", resource_id=org_id,
        )  # fmt: skip
        return result

    @get(
        "/reports/org-health",
        summary="The org health report for account managers: HTML (charts), CSV or JSON (staff; audited)",
        media_type="text/html",
        opt={
            "media_types": {"text/html": "string", "text/csv": "string", "application/json": "object"},
            **auth.staff_only(StaffPermission.read),
        },
    )
    async def org_health_report(
        self,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        state: State,
        fmt: Annotated[Literal["html", "csv", "json"], Parameter(query="format", default="html")],
    ) -> Response[Any]:
        path = state.settings.resolved_warehouse_path
        queries, report = services.warehouse_queries(), services.warehouse_report()
        if fmt == "html":
            body = await services.in_thread(report.render_html, path)
            media = "text/html; charset=utf-8"
        else:
            rows = await services.in_thread(report.report_rows, path)
            if fmt == "csv":
                body, media = report.render_csv(rows), "text/csv; charset=utf-8"
            else:
                as_of = await services.in_thread(queries.as_of, path)
                body, media = report.render_json(rows, as_of), "application/json"
        await audit.record(
            db, action="staff.report_viewed", actor=Actor.of(principal, as_staff=True), ctx=ctx,
            organization_id=None, resource_type="report", resource_id="org-health", metadata={"format": fmt},
        )  # fmt: skip
        return Response(body, media_type=media)
