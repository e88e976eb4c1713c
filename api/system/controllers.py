"""Liveness, readiness and who-am-I."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from sqlalchemy import and_, bindparam, join, select, text

from api.auth.models import PlatformRole, User
from api.db.reads import Read
from api.deps import PUBLIC, ReadContext
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
    async def me(self, read_ctx: ReadContext) -> MeOut:
        principal = read_ctx.principal
        if not principal.is_user:
            return MeOut(
                token_kind=principal.kind, user_id=None, email=None, name=None, platform_role=None,
                organization_id=principal.organization_id, memberships=[],
            )  # fmt: skip
        rows = await read_ctx.reader.all(READ_ME, user_id=principal.user_id)
        if not rows:
            raise NotFound("user not found")
        user_id, email, name, platform_role = rows[0][:4]
        return MeOut(
            token_kind=principal.kind, user_id=user_id, email=email, name=name,
            platform_role=platform_role, organization_id=None,
            memberships=[MembershipOut(*row[4:]) for row in rows if row[4] is not None],
        )  # fmt: skip


#: The user and their active and invited memberships of live organizations, in one statement (one
#: snapshot): a row per membership, or one row with no membership.
READ_ME = Read(
    select(
        User.id,
        User.email,
        User.name,
        User.platform_role,
        Membership.organization_id,
        Organization.name,
        Membership.role,
        Membership.status,
    )
    .select_from(User)
    .outerjoin(
        join(Membership, Organization, and_(Organization.id == Membership.organization_id, LIVE)),
        and_(
            Membership.user_id == User.id,
            Membership.status.in_((MembershipStatus.active, MembershipStatus.invited)),
        ),
    )
    .where(User.id == bindparam("user_id"))
    .order_by(Membership.id)
)
