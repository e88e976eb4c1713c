from __future__ import annotations

import uuid

from litestar import Controller, delete, get, post
from litestar.status_codes import HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission, StaffPermission
from api.pagination import Cursor, Limit, page_of
from api.tokens import services
from api.tokens.models import ApiToken, TokenKind
from api.tokens.schemas import IngestKeyCreate, TokenCreate, TokenCreated, TokenOut, TokenPage


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id, kind=token.kind, name=token.name, prefix=token.prefix,
        organization_id=token.organization_id, created_at=token.created_at,
        last_used_at=token.last_used_at, expires_at=token.expires_at, revoked_at=token.revoked_at,
        publishable=token.publishable, allowed_origins=token.allowed_origins,
    )  # fmt: skip


def token_created(token: ApiToken, secret: str) -> TokenCreated:
    out = token_out(token)
    return TokenCreated(**{f: getattr(out, f) for f in out.__struct_fields__}, token=secret)


def page(tokens: list[ApiToken], limit: int) -> TokenPage:
    return page_of(TokenPage, tokens, limit, token_out)


class MyTokenController(Controller):
    path = "/v1/me/tokens"
    tags = ["tokens"]

    @get("/", summary="List your own API tokens")
    async def list_tokens(
        self, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> TokenPage:
        user_id = auth.require_user(principal)
        tokens = await services.list_tokens(
            db, kind=TokenKind.user, user_id=user_id, cursor=cursor, limit=limit
        )
        return page(tokens, limit)

    @post("/", summary="Create a token that acts as you (its secret is shown once)")
    async def create(
        self, data: TokenCreate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> TokenCreated:
        user_id = auth.require_user(principal)
        token, secret = await services.create_token(
            db, kind=TokenKind.user, name=data.name, actor=Actor.of(principal), ctx=ctx,
            user_id=user_id, created_by=user_id, expires_in_days=data.expires_in_days,
        )  # fmt: skip
        return token_created(token, secret)

    @delete("/{token_id:uuid}", status_code=HTTP_204_NO_CONTENT, summary="Revoke one of your tokens")
    async def revoke(
        self, token_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> None:
        user_id = auth.require_user(principal)
        await services.revoke_token(
            db, token_id=token_id, kind=TokenKind.user, actor=Actor.of(principal), ctx=ctx, user_id=user_id
        )


class OrgIngestKeyController(Controller):
    path = "/v1/orgs/{org_id:uuid}/ingest-keys"
    tags = ["ingest keys"]

    @get("/", summary="List an organization's ingest keys (owner, admin)")
    async def list_keys(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> TokenPage:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        keys = await services.list_tokens(
            db, kind=TokenKind.org_ingest, organization_id=org_id, cursor=cursor, limit=limit
        )
        return page(keys, limit)

    @post(
        "/",
        summary="Create an ingest key or a publishable key for this organization (its secret is shown once)",
    )
    async def create(
        self,
        org_id: uuid.UUID,
        data: IngestKeyCreate,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> TokenCreated:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        token, secret = await services.create_token(
            db, kind=TokenKind.org_ingest, name=data.name, actor=Actor.of(principal), ctx=ctx,
            organization_id=org_id, created_by=principal.user_id, expires_in_days=data.expires_in_days,
            publishable=data.publishable, allowed_origins=data.allowed_origins,
        )  # fmt: skip
        return token_created(token, secret)

    @delete("/{key_id:uuid}", status_code=HTTP_204_NO_CONTENT, summary="Revoke an ingest key")
    async def revoke(
        self,
        org_id: uuid.UUID,
        key_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> None:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        await services.revoke_token(
            db, token_id=key_id, kind=TokenKind.org_ingest, actor=Actor.of(principal), ctx=ctx,
            organization_id=org_id,
        )  # fmt: skip


class PlatformIngestKeyController(Controller):
    path = "/v1/admin/ingest-keys"
    tags = ["admin"]

    @get("/", summary="List platform ingest keys (staff)", opt=auth.staff_only(StaffPermission.read))
    async def list_keys(
        self, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> TokenPage:
        keys = await services.list_tokens(db, kind=TokenKind.platform_ingest, cursor=cursor, limit=limit)
        return page(keys, limit)

    @post(
        "/",
        summary="Create a platform ingest key: server-side, every event names its org_id (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def create(
        self, data: IngestKeyCreate, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> TokenCreated:
        token, secret = await services.create_token(
            db, kind=TokenKind.platform_ingest, name=data.name, actor=Actor.of(principal, as_staff=True),
            ctx=ctx, created_by=principal.user_id, expires_in_days=data.expires_in_days,
            publishable=data.publishable, allowed_origins=data.allowed_origins,
        )  # fmt: skip
        return token_created(token, secret)

    @delete(
        "/{key_id:uuid}",
        status_code=HTTP_204_NO_CONTENT,
        summary="Revoke a platform ingest key (admin)",
        opt=auth.staff_only(StaffPermission.administer),
    )
    async def revoke(
        self, key_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> None:
        await services.revoke_token(
            db,
            token_id=key_id,
            kind=TokenKind.platform_ingest,
            actor=Actor.of(principal, as_staff=True),
            ctx=ctx,
        )
