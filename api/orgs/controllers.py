from __future__ import annotations

import uuid

from litestar import Controller, delete, get, patch, post
from litestar.status_codes import HTTP_204_NO_CONTENT
from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission
from api.deps import ReadContext
from api.members.models import OrgRole
from api.orgs import services
from api.orgs.models import Organization
from api.orgs.schemas import OrgCreate, OrgOut, OrgPage, OrgUpdate
from api.pagination import Cursor, Limit, first_id, page_of


def org_out(org: Organization, role: OrgRole | None = None) -> OrgOut:
    return OrgOut(
        id=org.id, name=org.name, slug=org.slug, status=org.status,
        created_at=org.created_at, updated_at=org.updated_at, external_id=org.external_id,
        traits=org.traits, role=role,
    )  # fmt: skip


class OrgController(Controller):
    path = "/v1/orgs"
    tags = ["organizations"]

    @post("/", summary="Create an organization (you become its owner)")
    async def create(
        self, data: OrgCreate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> OrgOut:
        auth.require_user(principal)
        org = await services.create_org(
            db, principal=principal, ctx=ctx, name=data.name, slug=data.slug, external_id=data.external_id
        )
        return org_out(org, OrgRole.owner)

    @get("/", summary="List the organizations you are an active member of")
    async def list_mine(
        self, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> OrgPage:
        user_id = auth.require_user(principal)
        rows = await services.list_user_orgs(db, user_id=user_id, cursor=cursor, limit=limit)
        return page_of(OrgPage, rows, limit, lambda row: org_out(*row), key=first_id)

    @get("/{org_id:uuid}", summary="Get an organization")
    async def read(self, org_id: uuid.UUID, read_ctx: ReadContext) -> OrgOut:
        access = await auth.read_access(read_ctx.reader, read_ctx.principal, org_id, Permission.read_org)
        org = await services.read_live_org(read_ctx.reader, org_id)
        return OrgOut(**dict(zip(services.ORG_FIELDS, org, strict=True)), role=access.role)

    @patch(
        "/{org_id:uuid}", summary="Update an organization's name, slug, external_id or traits (owner, admin)"
    )
    async def update(
        self, org_id: uuid.UUID, data: OrgUpdate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> OrgOut:
        access = await auth.org_access(db, principal, org_id, Permission.manage_org)
        changes = {
            k: getattr(data, k)
            for k in ("name", "slug", "external_id", "traits")
            if getattr(data, k) is not UNSET
        }
        org = await services.update_org(
            db, org_id=org_id, actor=Actor.of(principal), ctx=ctx, changes=changes
        )
        return org_out(org, access.role)

    @delete("/{org_id:uuid}", status_code=HTTP_204_NO_CONTENT, summary="Delete an organization (owner)")
    async def remove(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> None:
        await auth.org_access(db, principal, org_id, Permission.manage_owners)
        await services.delete_org(db, org_id=org_id, actor=Actor.of(principal), ctx=ctx)
