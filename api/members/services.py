"""Memberships: invite, accept, change role, remove; an organization always keeps an active owner."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, bindparam, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth import cache
from api.auth.context import Actor, OrgAccess, RequestContext
from api.auth.models import User, UserStatus
from api.auth.permissions import Permission, role_allows
from api.db.reads import Read, Reader
from api.emails import email_key, normalize_email
from api.errors import Conflict, Forbidden, NotFound
from api.members.models import Membership, MembershipStatus, OrgRole
from api.pagination import decode_cursor
from api.webhooks.messages import publish

LIVE = (MembershipStatus.active, MembershipStatus.invited)


def snapshot(m: Membership) -> dict[str, Any]:
    return {"user_id": str(m.user_id), "role": m.role.value, "status": m.status.value}


async def announce(
    session: AsyncSession, event_type: str, m: Membership, *, email: str | None = None, **extra: Any
) -> None:
    """Publish a ``member.*`` webhook message in the transaction of the change it announces."""
    if email is None:
        user = await session.get(User, m.user_id)
        email = user.email if user is not None else None
    await publish(
        session, organization_id=m.organization_id, event_type=event_type,
        payload={"organization_id": str(m.organization_id), "email": email, **snapshot(m), **extra},
    )  # fmt: skip


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The user whose address is the same as ``email`` (:func:`api.emails.email_key`)."""
    return await session.scalar(select(User).where(email_key(User.email) == email_key(literal(email))))


async def get_or_create_user(session: AsyncSession, *, email: str, name: str | None) -> tuple[User, bool]:
    email = normalize_email(email)
    user = await find_user_by_email(session, email)
    if user is not None:
        return user, False
    user = User(email=email, name=name, status=UserStatus.invited)
    session.add(user)
    await session.flush()
    return user, True


def _member_page(*columns: Any, org_id: Any, after: Any, limit: Any) -> Select[Any]:
    """The one members-page query: an organization's active and invited members in id order."""
    query = (
        select(*columns)
        .join(User, User.id == Membership.user_id)
        .where(Membership.organization_id == org_id, Membership.status.in_(LIVE))
        .order_by(Membership.id)
        .limit(limit)
    )
    return query if after is None else query.where(Membership.id > after)


async def list_members(
    session: AsyncSession, *, org_id: uuid.UUID, cursor: str | None, limit: int
) -> list[tuple[Membership, User]]:
    query = _member_page(Membership, User, org_id=org_id, after=decode_cursor(cursor), limit=limit + 1)
    return [(m, u) for m, u in (await session.execute(query)).all()]


#: A member as the API answers it (``MemberOut``'s fields, in order), after the membership's id.
MEMBER_COLUMNS = (
    Membership.id, User.id, User.email, User.name, Membership.role, Membership.status,
    Membership.invited_by, Membership.created_at, Membership.updated_at,
)  # fmt: skip
_PAGE: dict[str, Any] = {"org_id": bindparam("org_id"), "limit": bindparam("limit")}
READ_MEMBERS = Read(_member_page(*MEMBER_COLUMNS, after=None, **_PAGE))
READ_MEMBERS_AFTER = Read(_member_page(*MEMBER_COLUMNS, after=bindparam("after"), **_PAGE))


async def read_members(
    reader: Reader, *, org_id: uuid.UUID, cursor: str | None, limit: int
) -> list[tuple[Any, ...]]:
    """:func:`list_members` as :data:`MEMBER_COLUMNS` rows, read outside a transaction."""
    after = decode_cursor(cursor)
    if after is None:
        return await reader.all(READ_MEMBERS, org_id=org_id, limit=limit + 1)
    return await reader.all(READ_MEMBERS_AFTER, org_id=org_id, after=after, limit=limit + 1)


async def _membership(session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership:
    membership = await session.scalar(
        select(Membership)
        .where(
            Membership.organization_id == org_id,
            Membership.user_id == user_id,
            Membership.status.in_(LIVE),
        )
        .with_for_update()
    )
    if membership is None:
        raise NotFound("member not found")
    return membership


async def _ensure_other_owner(session: AsyncSession, org_id: uuid.UUID, leaving: Membership) -> None:
    """Refuse a change that would leave the organization with no active owner.

    Owner rows are locked first so two concurrent demotions cannot both see the other owner.
    """
    owners = (
        await session.scalars(
            select(Membership.id)
            .where(
                Membership.organization_id == org_id,
                Membership.role == OrgRole.owner,
                Membership.status == MembershipStatus.active,
            )
            .with_for_update()
        )
    ).all()
    if not [owner for owner in owners if owner != leaving.id]:
        raise Conflict("an organization must keep at least one active owner; make someone else owner first")


def _require_owner_rights(access: OrgAccess, *roles: OrgRole) -> None:
    if OrgRole.owner in roles and not role_allows(access.role, Permission.manage_owners):
        raise Forbidden("only an owner may grant, change or remove the owner role")


async def invite(
    session: AsyncSession,
    *,
    access: OrgAccess,
    actor: Actor,
    ctx: RequestContext | None,
    email: str,
    role: OrgRole,
    name: str | None = None,
    status: MembershipStatus = MembershipStatus.invited,
) -> tuple[Membership, User]:
    _require_owner_rights(access, role)
    org_id = access.organization_id
    user, created = await get_or_create_user(session, email=email, name=name)
    existing = await session.scalar(
        select(Membership)
        .where(Membership.organization_id == org_id, Membership.user_id == user.id)
        .with_for_update()
    )
    if existing is not None and existing.status in LIVE:
        raise Conflict(f"{user.email} is already a member of this organization", errors=[
            {"field": "email", "message": "already a member"}
        ])  # fmt: skip
    if existing is None:
        membership = Membership(organization_id=org_id, user_id=user.id, role=role, status=status)
        session.add(membership)
    else:
        membership = existing
        membership.role, membership.status = role, status
    membership.invited_by = access.principal.user_id
    await session.flush()
    await audit.record(
        session, action="member.invited", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type="membership", resource_id=membership.id, after=snapshot(membership),
        metadata={"email": user.email, "user_created": created},
    )  # fmt: skip
    added = membership.status is MembershipStatus.active
    await announce(session, "member.added" if added else "member.invited", membership, email=user.email)
    return membership, user


async def accept(
    session: AsyncSession, *, org_id: uuid.UUID, user_id: uuid.UUID, actor: Actor, ctx: RequestContext
) -> Membership:
    membership = await session.scalar(
        select(Membership)
        .where(
            Membership.organization_id == org_id,
            Membership.user_id == user_id,
            Membership.status == MembershipStatus.invited,
        )
        .with_for_update()
    )
    if membership is None:
        raise NotFound("organization not found")
    before = snapshot(membership)
    membership.status = MembershipStatus.active
    user = await session.get(User, user_id)
    if user is not None and user.status is UserStatus.invited:
        user.status = UserStatus.active
    await session.flush()
    await audit.record(
        session, action="member.joined", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type="membership", resource_id=membership.id, before=before, after=snapshot(membership),
    )  # fmt: skip
    await announce(session, "member.joined", membership, email=user.email if user is not None else None)
    return membership


async def change_role(
    session: AsyncSession,
    *,
    access: OrgAccess,
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID,
    role: OrgRole,
) -> Membership:
    membership = await _membership(session, access.organization_id, user_id)
    _require_owner_rights(access, membership.role, role)
    if membership.role == role:
        return membership
    if membership.role is OrgRole.owner and membership.status is MembershipStatus.active:
        await _ensure_other_owner(session, access.organization_id, membership)
    before = snapshot(membership)
    membership.role = role
    cache.invalidate_after_commit(session)  # a cached membership carries the old role
    await session.flush()
    await audit.record(
        session, action="member.role_changed", actor=actor, ctx=ctx, organization_id=access.organization_id,
        resource_type="membership", resource_id=membership.id, before=before, after=snapshot(membership),
    )  # fmt: skip
    await announce(session, "member.role_changed", membership, previous_role=before["role"])
    return membership


async def remove(
    session: AsyncSession, *, access: OrgAccess, actor: Actor, ctx: RequestContext, user_id: uuid.UUID
) -> None:
    """Remove a member (owners and admins), or leave (anyone, for themselves)."""
    membership = await _membership(session, access.organization_id, user_id)
    leaving_self = user_id == access.principal.user_id
    if not leaving_self:
        if not role_allows(access.role, Permission.manage_org):
            raise Forbidden(f"the {access.role.value} role may not remove members")
        _require_owner_rights(access, membership.role)
    if membership.role is OrgRole.owner and membership.status is MembershipStatus.active:
        await _ensure_other_owner(session, access.organization_id, membership)
    before = snapshot(membership)
    membership.status = MembershipStatus.removed
    cache.invalidate_after_commit(session)  # the membership cache must not outlive it
    await session.flush()
    await audit.record(
        session, action="member.removed", actor=actor, ctx=ctx, organization_id=access.organization_id,
        resource_type="membership", resource_id=membership.id, before=before, after=snapshot(membership),
    )  # fmt: skip
    await announce(session, "member.removed", membership, left=leaving_self)
