"""Support tools for the vendor's staff: search, one-view org page, suspension, platform roles."""

from __future__ import annotations

import uuid

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth import cache
from api.auth.context import Actor, RequestContext
from api.db.models import (
    ApiToken,
    AuditEntry,
    Membership,
    MembershipStatus,
    Organization,
    OrgStatus,
    PlatformRole,
    TokenKind,
    User,
)
from api.errors import Conflict, NotFound
from api.pagination import decode_cursor
from api.webhooks.messages import publish

RECENT_AUDIT = 20


def _like(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_orgs(
    session: AsyncSession, *, q: str | None, cursor: str | None, limit: int
) -> list[tuple[Organization, int]]:
    after = decode_cursor(cursor)
    active_members = (
        select(func.count())
        .where(Membership.organization_id == Organization.id, Membership.status == MembershipStatus.active)
        .correlate(Organization)
        .scalar_subquery()
    )
    query = select(Organization, active_members).order_by(Organization.id).limit(limit + 1)
    if q:
        pattern = _like(q)
        member_match = exists().where(
            Membership.organization_id == Organization.id,
            Membership.user_id == User.id,
            User.email.ilike(pattern, escape="\\"),
        )
        query = query.where(
            or_(
                Organization.name.ilike(pattern, escape="\\"),
                Organization.slug.ilike(pattern, escape="\\"),
                member_match,
            )
        )
    if after is not None:
        query = query.where(Organization.id > after)
    return [(org, count) for org, count in (await session.execute(query)).all()]


async def org_view(
    session: AsyncSession, *, org_id: uuid.UUID, actor: Actor, ctx: RequestContext
) -> tuple[Organization, list[tuple[Membership, User]], int, list[AuditEntry]]:
    """Everything support needs about one org, in one read; the read itself is audited."""
    org = await session.get(Organization, org_id)
    if org is None:
        raise NotFound("organization not found")
    members = [
        (m, u)
        for m, u in (
            await session.execute(
                select(Membership, User)
                .join(User, User.id == Membership.user_id)
                .where(Membership.organization_id == org_id)
                .order_by(Membership.id)
            )
        ).all()
    ]
    keys = await session.scalar(
        select(func.count()).where(
            ApiToken.organization_id == org_id,
            ApiToken.kind == TokenKind.org_ingest,
            ApiToken.revoked_at.is_(None),
        )
    )
    recent = list(
        (
            await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.organization_id == org_id)
                .order_by(AuditEntry.seq.desc())
                .limit(RECENT_AUDIT)
            )
        ).all()
    )
    await audit.record(
        session, action="staff.org_viewed", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type="organization", resource_id=org_id,
    )  # fmt: skip
    return org, members, keys or 0, recent


async def set_suspended(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    suspended: bool,
    reason: str | None,
    actor: Actor,
    ctx: RequestContext | None,
) -> Organization:
    org = await session.get(Organization, org_id, with_for_update=True)
    if org is None or org.deleted_at is not None:
        raise NotFound("organization not found")
    target = OrgStatus.suspended if suspended else OrgStatus.active
    if org.status is target:
        return org  # idempotent: nothing changed, nothing to audit
    before = {"status": org.status.value, "suspended_reason": org.suspended_reason}
    org.status, org.suspended_reason = target, reason if suspended else None
    cache.invalidate()
    await session.flush()
    await audit.record(
        session, action="org.suspended" if suspended else "org.unsuspended", actor=actor, ctx=ctx,
        organization_id=org_id, resource_type="organization", resource_id=org_id, before=before,
        after={"status": org.status.value, "suspended_reason": org.suspended_reason},
    )  # fmt: skip
    await publish(
        session, organization_id=org_id, event_type="org.suspended" if suspended else "org.unsuspended",
        payload={"organization_id": str(org_id), "status": org.status.value},
    )  # fmt: skip
    return org


async def set_platform_role(
    session: AsyncSession, *, user_id: uuid.UUID, role: PlatformRole | None, actor: Actor, ctx: RequestContext
) -> User:
    user = await session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound("user not found")
    if user.platform_role == role:
        return user
    if user.platform_role is PlatformRole.admin:
        admins = (
            await session.scalars(
                select(User.id).where(User.platform_role == PlatformRole.admin).with_for_update()
            )
        ).all()
        if [a for a in admins if a != user.id] == []:
            raise Conflict("the platform must keep at least one admin")
    before = {"platform_role": user.platform_role.value if user.platform_role else None}
    user.platform_role = role
    cache.invalidate()
    await session.flush()
    await audit.record(
        session, action="user.platform_role_changed", actor=actor, ctx=ctx, organization_id=None,
        resource_type="user", resource_id=user.id, before=before,
        after={"platform_role": role.value if role else None},
    )  # fmt: skip
    return user
