"""Support tools for the vendor's staff: search, one-view org page, suspension, platform roles."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.audit.models import AuditEntry
from api.auth import cache
from api.auth.context import Actor, RequestContext
from api.auth.models import PlatformRole, User
from api.errors import Conflict, NotFound
from api.members.models import Membership, MembershipStatus
from api.members.services import list_members
from api.orgs.live import get_live_org
from api.orgs.models import Organization, OrgStatus
from api.pagination import decode_cursor
from api.tokens.models import ApiToken, TokenKind
from api.webhooks.messages import publish

RECENT_AUDIT = 20
#: Members in the org view itself; the rest are a page away (``GET /v1/admin/orgs/{id}/members``).
VIEW_MEMBERS = 20


@dataclass(frozen=True, slots=True)
class OrgView:
    org: Organization
    #: The first ``VIEW_MEMBERS`` active and invited members, plus one when there are more.
    members: list[tuple[Membership, User]]
    active_members: int
    invited_members: int
    active_ingest_keys: int
    recent_audit: list[AuditEntry]


def _like(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_orgs(
    session: AsyncSession, *, q: str | None, cursor: str | None, limit: int
) -> list[tuple[Organization, int]]:
    """Organizations whose name, slug or ``external_id`` contains ``q``, whose Stripe customer id is
    ``q``, or with a member whose email contains it; oldest first, with their active members."""
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
                Organization.external_id.ilike(pattern, escape="\\"),
                Organization.stripe_customer_id == q.strip(),
                member_match,
            )
        )
    if after is not None:
        query = query.where(Organization.id > after)
    return [(org, count) for org, count in (await session.execute(query)).all()]


async def org_view(session: AsyncSession, *, org_id: uuid.UUID, actor: Actor, ctx: RequestContext) -> OrgView:
    """Everything support needs about one org, in one read; the read itself is audited.

    Members come as their first page (``VIEW_MEMBERS``), the rest from ``staff_members``."""
    org = await session.get(Organization, org_id)
    if org is None:
        raise NotFound("organization not found")
    members = await list_members(session, org_id=org_id, cursor=None, limit=VIEW_MEMBERS)
    counts = dict(
        (
            await session.execute(
                select(Membership.status, func.count())
                .where(Membership.organization_id == org_id)
                .group_by(Membership.status)
            )
        ).all()
    )
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
    return OrgView(
        org=org, members=members, active_members=counts.get(MembershipStatus.active, 0),
        invited_members=counts.get(MembershipStatus.invited, 0), active_ingest_keys=keys or 0,
        recent_audit=recent,
    )  # fmt: skip


async def staff_members(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    cursor: str | None,
    limit: int,
    actor: Actor,
    ctx: RequestContext,
) -> list[tuple[Membership, User]]:
    """An organization's active and invited members, a page at a time, for staff (audited)."""
    if await session.get(Organization, org_id) is None:
        raise NotFound("organization not found")
    rows = await list_members(session, org_id=org_id, cursor=cursor, limit=limit)
    await audit.record(
        session, action="staff.members_viewed", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type="organization", resource_id=org_id, metadata={"members_shown": len(rows[:limit])},
    )  # fmt: skip
    return rows


async def set_suspended(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    suspended: bool,
    reason: str | None,
    actor: Actor,
    ctx: RequestContext | None,
) -> Organization:
    """Suspend (``reason`` is kept on the org) or lift a suspension (``reason``, when given, is kept
    in the audit entry only); a no-op when the org is already so."""
    org = await get_live_org(session, org_id, for_update=True)
    target = OrgStatus.suspended if suspended else OrgStatus.active
    if org.status is target:
        return org  # idempotent: nothing changed, nothing to audit
    before = {"status": org.status.value, "suspended_reason": org.suspended_reason}
    org.status, org.suspended_reason = target, reason if suspended else None
    cache.invalidate_after_commit(session)
    await session.flush()
    await audit.record(
        session, action="org.suspended" if suspended else "org.unsuspended", actor=actor, ctx=ctx,
        organization_id=org_id, resource_type="organization", resource_id=org_id, before=before,
        after={"status": org.status.value, "suspended_reason": org.suspended_reason},
        metadata={"reason": reason} if reason and not suspended else None,
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
    cache.invalidate_after_commit(session)
    await session.flush()
    await audit.record(
        session, action="user.platform_role_changed", actor=actor, ctx=ctx, organization_id=None,
        resource_type="user", resource_id=user.id, before=before,
        after={"platform_role": role.value if role else None},
    )  # fmt: skip
    return user


async def org_names(session: AsyncSession, org_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The names of these organizations (for lists that span organizations)."""
    if not org_ids:
        return {}
    rows = await session.execute(
        select(Organization.id, Organization.name).where(Organization.id.in_(org_ids))
    )
    return {org_id: name for org_id, name in rows.all()}
