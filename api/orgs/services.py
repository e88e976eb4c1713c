"""Organizations: create, read, update, soft-delete."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth import cache
from api.auth.context import Actor, Principal, RequestContext
from api.db.base import utcnow
from api.db.reads import Read, Reader
from api.errors import Conflict, NotFound
from api.members.models import Membership, MembershipStatus, OrgRole
from api.orgs.live import LIVE, get_live_org
from api.orgs.models import Organization
from api.pagination import decode_cursor
from api.webhooks.messages import publish


def snapshot(org: Organization) -> dict[str, Any]:
    return {
        "name": org.name, "slug": org.slug, "status": org.status.value, "external_id": org.external_id,
        "traits": org.traits,
    }  # fmt: skip


async def _ensure_external_id_free(
    session: AsyncSession, external_id: str | None, *, except_id: uuid.UUID | None = None
) -> None:
    if external_id is None:
        return
    taken = await session.scalar(select(Organization.id).where(Organization.external_id == external_id))
    if taken is not None and taken != except_id:
        raise Conflict(
            f"the external_id {external_id!r} is already another organization's",
            errors=[{"field": "external_id", "message": "taken"}],
        )


async def _ensure_slug_free(session: AsyncSession, slug: str, *, except_id: uuid.UUID | None = None) -> None:
    taken = await session.scalar(select(Organization.id).where(Organization.slug == slug))
    if taken is not None and taken != except_id:
        raise Conflict(f"the slug {slug!r} is already taken", errors=[{"field": "slug", "message": "taken"}])


async def create_org(
    session: AsyncSession,
    *,
    principal: Principal,
    ctx: RequestContext | None,
    name: str,
    slug: str,
    external_id: str | None = None,
) -> Organization:
    """Create an organization; its creator becomes its first active owner."""
    assert principal.user_id is not None
    await _ensure_slug_free(session, slug)
    await _ensure_external_id_free(session, external_id)
    org = Organization(name=name, slug=slug, external_id=external_id, traits={})
    session.add(org)
    await session.flush()
    membership = Membership(
        organization_id=org.id, user_id=principal.user_id, role=OrgRole.owner, status=MembershipStatus.active
    )
    session.add(membership)
    await session.flush()
    actor = Actor.of(principal)
    await audit.record(
        session, action="org.created", actor=actor, ctx=ctx, organization_id=org.id,
        resource_type="organization", resource_id=org.id, after=snapshot(org),
    )  # fmt: skip
    await audit.record(
        session, action="member.added", actor=actor, ctx=ctx, organization_id=org.id,
        resource_type="membership", resource_id=membership.id,
        after={"user_id": str(principal.user_id), "role": "owner", "status": "active"},
    )  # fmt: skip
    return org


async def list_user_orgs(
    session: AsyncSession, *, user_id: uuid.UUID, cursor: str | None, limit: int
) -> list[tuple[Organization, OrgRole]]:
    after = decode_cursor(cursor)
    query = (
        select(Organization, Membership.role)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(
            Membership.user_id == user_id,
            Membership.status == MembershipStatus.active,
            LIVE,
        )
        .order_by(Organization.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(Organization.id > after)
    return [(org, role) for org, role in (await session.execute(query)).all()]


async def update_org(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    actor: Actor,
    ctx: RequestContext | None,
    changes: dict[str, Any],
) -> Organization:
    org = await get_live_org(session, org_id)
    before = snapshot(org)
    if "slug" in changes and changes["slug"] != org.slug:
        await _ensure_slug_free(session, changes["slug"], except_id=org.id)
    if "external_id" in changes and changes["external_id"] != org.external_id:
        await _ensure_external_id_free(session, changes["external_id"], except_id=org.id)
    for key, value in changes.items():
        setattr(org, key, value)
    await session.flush()
    if snapshot(org) != before:
        await audit.record(
            session, action="org.updated", actor=actor, ctx=ctx, organization_id=org.id,
            resource_type="organization", resource_id=org.id, before=before, after=snapshot(org),
        )  # fmt: skip
        await publish(
            session, organization_id=org.id, event_type="org.updated",
            payload={"organization_id": str(org.id), **snapshot(org), "previous": before},
        )  # fmt: skip
    return org


async def delete_org(
    session: AsyncSession, *, org_id: uuid.UUID, actor: Actor, ctx: RequestContext | None
) -> None:
    """Soft delete: the row and its audit history stay; the slug is freed for reuse."""
    org = await get_live_org(session, org_id)
    before = snapshot(org)
    # Announced before the soft delete, so the organization's endpoints hear of it.
    await publish(
        session,
        organization_id=org.id,
        event_type="org.deleted",
        payload={"organization_id": str(org.id), **before},
    )
    org.deleted_at = utcnow()
    cache.invalidate_after_commit(session)
    org.slug = f"{org.slug[:40]}--deleted-{org.id.hex[-12:]}"
    await session.flush()
    await audit.record(
        session, action="org.deleted", actor=actor, ctx=ctx, organization_id=org.id,
        resource_type="organization", resource_id=org.id, before=before,
    )  # fmt: skip


#: An organization as the API answers it (``OrgOut``'s fields but the caller's role).
ORG_COLUMNS = (
    Organization.id, Organization.name, Organization.slug, Organization.status, Organization.created_at,
    Organization.updated_at, Organization.external_id, Organization.traits,
)  # fmt: skip
ORG_FIELDS = tuple(column.key for column in ORG_COLUMNS)
READ_LIVE_ORG = Read(select(*ORG_COLUMNS).where(Organization.id == bindparam("org_id"), LIVE))


async def read_live_org(reader: Reader, org_id: uuid.UUID) -> tuple[Any, ...]:
    """:func:`get_live_org` as :data:`ORG_COLUMNS`, read outside a transaction; 404 if not live."""
    row = await reader.first(READ_LIVE_ORG, org_id=org_id)
    if row is None:
        raise NotFound("organization not found")
    return row
