"""Liveness, readiness and who-am-I."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.context import Principal
from api.auth.models import PlatformRole, User
from api.deps import PUBLIC
from api.errors import NotFound
from api.members.models import Membership, MembershipStatus, OrgRole
from api.orgs.live import LIVE
from api.orgs.models import Organization
from api.tokens.models import TokenKind


class Health(msgspec.Struct):
    status: str


class MembershipOut(msgspec.Struct):
    organization_id: uuid.UUID
    organization_name: str
    role: OrgRole
    status: MembershipStatus


class MeOut(msgspec.Struct):
    token_kind: TokenKind
    user_id: uuid.UUID | None
    email: str | None
    name: str | None
    platform_role: PlatformRole | None
    #: For org ingest keys: the organization the key writes to.
    organization_id: uuid.UUID | None
    memberships: list[MembershipOut]


class SystemController(Controller):
    tags = ["system"]

    @get("/health", opt=PUBLIC, summary="Liveness: the process answers")
    async def health(self) -> Health:
        return Health(status="ok")

    @get("/ready", opt=PUBLIC, summary="Readiness: the database answers")
    async def ready(self, state: State) -> Response[Any]:
        try:
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return Response(
                {"type": "about:blank", "title": "Not ready", "status": 503,
                 "detail": f"database unavailable: {type(exc).__name__}"},
                status_code=503, media_type="application/problem+json",
            )  # fmt: skip
        return Response(Health(status="ready"))

    @get("/v1/me", summary="Who the token belongs to, and their organizations")
    async def me(self, db: AsyncSession, principal: Principal) -> MeOut:
        if not principal.is_user:
            return MeOut(
                token_kind=principal.kind, user_id=None, email=None, name=None, platform_role=None,
                organization_id=principal.organization_id, memberships=[],
            )  # fmt: skip
        user = await db.get(User, principal.user_id)
        if user is None:
            raise NotFound("user not found")
        rows = await db.execute(
            select(Membership, Organization.name)
            .join(Organization, Organization.id == Membership.organization_id)
            .where(
                Membership.user_id == user.id,
                Membership.status.in_((MembershipStatus.active, MembershipStatus.invited)),
                LIVE,
            )
            .order_by(Membership.id)
        )
        return MeOut(
            token_kind=principal.kind, user_id=user.id, email=user.email, name=user.name,
            platform_role=user.platform_role, organization_id=None,
            memberships=[
                MembershipOut(
                    organization_id=m.organization_id, organization_name=name, role=m.role, status=m.status
                )
                for m, name in rows.all()
            ],
        )  # fmt: skip
