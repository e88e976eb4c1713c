from __future__ import annotations

import uuid
from operator import itemgetter

from litestar import Controller, delete, get, patch, post
from litestar.status_codes import HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.models import User
from api.auth.permissions import Permission
from api.auth.services import ALLOW_INVITED
from api.deps import ReadContext
from api.members import services
from api.members.models import Membership
from api.members.schemas import MemberInvite, MemberOut, MemberPage, MemberUpdate
from api.pagination import Cursor, Limit, page_of


def member_out(m: Membership, u: User) -> MemberOut:
    return MemberOut(
        user_id=u.id, email=u.email, name=u.name, role=m.role, status=m.status,
        invited_by=m.invited_by, created_at=m.created_at, updated_at=m.updated_at,
    )  # fmt: skip


class MemberController(Controller):
    path = "/v1/orgs/{org_id:uuid}/members"
    tags = ["members"]

    @get("/", summary="List an organization's active and invited members")
    async def list_members(
        self, org_id: uuid.UUID, read_ctx: ReadContext, cursor: Cursor, limit: Limit
    ) -> MemberPage:
        await auth.read_access(read_ctx.reader, read_ctx.principal, org_id, Permission.read_org)
        rows = await services.read_members(read_ctx.reader, org_id=org_id, cursor=cursor, limit=limit)
        return page_of(MemberPage, rows, limit, lambda row: MemberOut(*row[1:]), key=itemgetter(0))

    @post("/", summary="Invite someone by email with a role (creates the user when new)")
    async def invite(
        self,
        org_id: uuid.UUID,
        data: MemberInvite,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> MemberOut:
        access = await auth.org_access(db, principal, org_id, Permission.manage_org)
        membership, user = await services.invite(
            db,
            access=access,
            actor=Actor.of(principal),
            ctx=ctx,
            email=data.email,
            role=data.role,
            name=data.name,
        )
        return member_out(membership, user)

    @post("/accept", summary="Accept your pending invitation to this organization", opt={ALLOW_INVITED: True})
    async def accept(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> MemberOut:
        user_id = auth.require_user(principal)
        membership = await services.accept(
            db, org_id=org_id, user_id=user_id, actor=Actor.of(principal), ctx=ctx
        )
        user = await db.get(User, user_id)
        assert user is not None
        return member_out(membership, user)

    @patch("/{user_id:uuid}", summary="Change a member's role")
    async def change_role(
        self,
        org_id: uuid.UUID,
        user_id: uuid.UUID,
        data: MemberUpdate,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> MemberOut:
        access = await auth.org_access(db, principal, org_id, Permission.manage_org)
        membership = await services.change_role(
            db, access=access, actor=Actor.of(principal), ctx=ctx, user_id=user_id, role=data.role
        )
        user = await db.get(User, user_id)
        assert user is not None
        return member_out(membership, user)

    @delete("/{user_id:uuid}", status_code=HTTP_204_NO_CONTENT, summary="Remove a member, or leave")
    async def remove(
        self,
        org_id: uuid.UUID,
        user_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> None:
        access = await auth.org_access(db, principal, org_id, Permission.read_org)
        await services.remove(db, access=access, actor=Actor.of(principal), ctx=ctx, user_id=user_id)
