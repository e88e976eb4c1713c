from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get, post, put
from litestar.openapi.spec import Example
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from api.admin import services
from api.admin.schemas import (
    AdminOrgPage,
    AdminOrgSummary,
    AdminOrgView,
    OrgStatusOut,
    PlatformRoleUpdate,
    SuspendRequest,
    UserOut,
)
from api.audit.views import entry_out
from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.models import User
from api.auth.permissions import StaffPermission
from api.billing.services import billing_screen
from api.flags import services as flags
from api.flags.controllers import override_out
from api.flags.schemas import OrgFlagState
from api.members.controllers import member_out
from api.members.models import Membership
from api.members.schemas import MemberPage
from api.orgs.models import Organization
from api.pagination import Cursor, Limit, first_id, page_of
from api.webhooks.deliveries import failing_endpoints


def summary(org: Organization, active_members: int) -> AdminOrgSummary:
    return AdminOrgSummary(
        id=org.id, name=org.name, slug=org.slug, status=org.status, created_at=org.created_at,
        deleted_at=org.deleted_at, active_members=active_members, external_id=org.external_id,
    )  # fmt: skip


def member_page(rows: list[tuple[Membership, User]], limit: int) -> MemberPage:
    return page_of(MemberPage, rows, limit, lambda row: member_out(*row), key=first_id)


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]

    @get(
        "/orgs",
        summary="Search organizations by name, slug, external id, Stripe customer or member email (staff)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def search_orgs(
        self,
        db: AsyncSession,
        principal: Principal,
        cursor: Cursor,
        limit: Limit,
        q: Annotated[
            str | None,
            Parameter(
                default=None,
                max_length=200,
                description="Organizations whose name, slug or `external_id` contains this text, whose "
                "Stripe customer id is this text, or with a member whose email contains it "
                "(case-insensitive; `%` and `_` are taken literally). Without it: every organization, "
                "oldest first.",
                examples=[Example(value="acme"), Example(value="ada@acme.example")],
            ),
        ],
    ) -> AdminOrgPage:
        rows = await services.search_orgs(db, q=q, cursor=cursor, limit=limit)
        return page_of(AdminOrgPage, rows, limit, lambda row: summary(*row), key=first_id)

    @get(
        "/orgs/{org_id:uuid}",
        summary="One organization in one view (staff; the read is audited)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def org_view(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> AdminOrgView:
        view = await services.org_view(db, org_id=org_id, actor=Actor.of(principal, as_staff=True), ctx=ctx)
        org = view.org
        states, overrides = await flags.org_flags(db, org_id=org_id)
        billing = await billing_screen(db, org_id)
        return AdminOrgView(
            id=org.id, name=org.name, slug=org.slug, status=org.status,
            suspended_reason=org.suspended_reason, stripe_customer_id=org.stripe_customer_id,
            created_at=org.created_at, deleted_at=org.deleted_at, external_id=org.external_id,
            traits=org.traits, members=member_page(view.members, services.VIEW_MEMBERS),
            active_members=view.active_members,
            invited_members=view.invited_members, active_ingest_keys=view.active_ingest_keys,
            recent_audit=[entry_out(e) for e in view.recent_audit],
            flags=[
                OrgFlagState(
                    key=f.key, enabled=r.enabled, reason=r.reason, bucket=r.bucket,
                    rollout_percentage=f.rollout_percentage, stickiness=f.stickiness, rule=r.rule,
                    variant=r.variant, explanation=r.explain(),
                )
                for f, r in states
            ],
            flag_overrides=[override_out(o, key, org.name) for o, key in overrides],
            billing=billing,
            failing_endpoints=await failing_endpoints(db, org_id=org_id),
        )  # fmt: skip

    @get(
        "/orgs/{org_id:uuid}/members",
        summary="An organization's active and invited members, a page at a time (staff; audited)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def org_members(
        self,
        org_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        cursor: Cursor,
        limit: Limit,
    ) -> MemberPage:
        rows = await services.staff_members(
            db, org_id=org_id, cursor=cursor, limit=limit, actor=Actor.of(principal, as_staff=True), ctx=ctx
        )
        return member_page(rows, limit)

    @post(
        "/orgs/{org_id:uuid}/suspend",
        summary="Suspend an organization: its keys and members stop (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def suspend(
        self,
        org_id: uuid.UUID,
        data: SuspendRequest,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> OrgStatusOut:
        org = await services.set_suspended(
            db,
            org_id=org_id,
            suspended=True,
            reason=data.reason,
            actor=Actor.of(principal, as_staff=True),
            ctx=ctx,
        )
        return OrgStatusOut(id=org.id, status=org.status, suspended_reason=org.suspended_reason)

    @post(
        "/orgs/{org_id:uuid}/unsuspend",
        summary="Lift a suspension (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def unsuspend(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> OrgStatusOut:
        org = await services.set_suspended(
            db, org_id=org_id, suspended=False, reason=None, actor=Actor.of(principal, as_staff=True), ctx=ctx
        )
        return OrgStatusOut(id=org.id, status=org.status, suspended_reason=org.suspended_reason)

    @put(
        "/users/{user_id:uuid}/platform-role",
        summary="Grant or remove a platform role (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def set_platform_role(
        self,
        user_id: uuid.UUID,
        data: PlatformRoleUpdate,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> UserOut:
        user = await services.set_platform_role(
            db, user_id=user_id, role=data.platform_role, actor=Actor.of(principal, as_staff=True), ctx=ctx
        )
        return UserOut(
            id=user.id,
            email=user.email,
            name=user.name,
            platform_role=user.platform_role,
            status=user.status.value,
        )
