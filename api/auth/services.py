"""Authentication (bearer token -> principal) and authorization (principal -> org access)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.auth import cache
from api.auth.context import OrgAccess, Principal
from api.auth.models import User, UserStatus
from api.auth.permissions import STAFF_PERMISSIONS, Permission, StaffPermission, role_allows
from api.auth.secrets import digest
from api.db.base import utcnow
from api.db.reads import Read, Reader
from api.errors import Forbidden, NotFound, Unauthorized
from api.members.models import Membership, MembershipStatus, OrgRole
from api.orgs.live import LIVE, is_live
from api.orgs.models import Organization, OrgStatus
from api.tokens.models import ApiToken, TokenKind

ORG_NOT_FOUND = "organization not found"


#: Route option: the route also takes HTTP Basic with the key as the user name and an empty password
#: (Segment's write-key auth, what its SDKs send).
BASIC_WRITE_KEY = "basic_write_key"


def bearer_secret(authorization: str | None, *, basic: bool = False) -> str:
    """The token an Authorization header carries: ``Bearer <token>``, or with ``basic`` also
    ``Basic base64(<token>:)``."""
    expected = "`Bearer <token>` or `Basic base64(<write key>:)`" if basic else "`Bearer <token>`"
    if not authorization:
        raise Unauthorized(f"missing Authorization header: send `Authorization: {expected.strip('`')}`")
    scheme, _, secret = authorization.partition(" ")
    if basic and scheme.lower() == "basic":
        return _basic_user(secret.strip())
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized(f"the Authorization header must be {expected}")
    return secret.strip()


def _basic_user(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Unauthorized("the Basic credentials are not base64 of `<write key>:`") from None
    user, _, password = decoded.partition(":")
    if not user.strip() or password:
        raise Unauthorized("Basic credentials are the write key as the user name and an empty password")
    return user.strip()


async def authenticate(session: AsyncSession, secret: str, *, touch_interval: int) -> Principal:
    """Resolve a token's secret. Unknown, expired and revoked tokens are all 401, told apart in ``detail``."""
    row = (
        await session.execute(
            select(ApiToken, User)
            .outerjoin(User, User.id == ApiToken.user_id)
            .where(ApiToken.secret_hash == digest(secret))
        )
    ).one_or_none()
    if row is None:
        raise Unauthorized("invalid token")
    token, user = row
    now = utcnow()
    if token.revoked_at is not None:
        raise Unauthorized("this token has been revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthorized("this token has expired")
    if user is not None and user.status is UserStatus.disabled:
        raise Unauthorized("this user is disabled")
    if token.kind is TokenKind.org_ingest:
        org_status = await session.scalar(
            select(Organization.status).where(Organization.id == token.organization_id, LIVE)
        )
        if org_status is None:
            raise Unauthorized("this key's organization has been deleted")
        if org_status is OrgStatus.suspended:
            raise Forbidden("this key's organization is suspended; contact support")
    if token.last_used_at is None or now - token.last_used_at > timedelta(seconds=touch_interval):
        await session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
    return Principal(
        token_id=token.id,
        kind=token.kind,
        user_id=token.user_id,
        email=user.email if user is not None else None,
        platform_role=user.platform_role if user is not None else None,
        organization_id=token.organization_id,
        publishable=token.publishable,
        allowed_origins=frozenset(token.allowed_origins) if token.allowed_origins is not None else None,
    )


#: Route option: browsers may call this route (``api/cors.py`` answers its CORS), and a publishable
#: key may reach it. The one definition of what a publishable key reaches: the routes that write
#: events (``/segment/v1/*``, ``/v1/events*``) and evaluate flags (``/v1/flags/evaluate*``,
#: ``/ofrep/*``) carry it; nothing else does.
BROWSER = "browser"
BROWSER_ROUTE: dict[str, Any] = {BROWSER: True}


def check_key_reach(principal: Principal, opt: Mapping[str, Any], *, origin: str | None) -> None:
    """Refuse a publishable key off the browser routes, and an ingest key sent from a browser
    origin it does not allow (``authenticate_request`` calls this for every route).

    A publishable key with no ``allowed_origins`` is accepted from any origin; a secret ingest key
    with none is accepted from no browser at all (it is meant for servers, which send no ``Origin``).
    """
    if principal.publishable and not opt.get(BROWSER):
        raise Forbidden("a publishable key may only send events and evaluate flags")
    if origin is None or principal.is_user:
        return
    allowed = principal.allowed_origins
    if allowed is None and principal.publishable:
        return
    if allowed is None or origin.lower() not in allowed:
        kind = "publishable" if principal.publishable else "secret ingest"
        raise Forbidden(f"this {kind} key is not allowed from the browser origin {origin!r}")


def require_user(principal: Principal) -> uuid.UUID:
    if not principal.is_user or principal.user_id is None:
        raise Forbidden("this route needs a user token, not an ingest key")
    return principal.user_id


#: Route option naming the staff permission a ``/v1/admin/...`` route needs (see :func:`staff_only`).
STAFF_PERMISSION = "staff_permission"


def staff_only(permission: StaffPermission) -> dict[str, StaffPermission]:
    """The route option of a staff route: ``authenticate_request`` enforces it before the handler
    runs, and the tests enumerate the admin-only routes from it. A ``/v1/admin/...`` route without
    it needs the strictest permission (``administer``)."""
    return {STAFF_PERMISSION: permission}


def staff_permission(opt: Mapping[str, Any]) -> StaffPermission:
    """The staff permission a route's options ask for; unmarked routes need ``administer``."""
    return StaffPermission(opt.get(STAFF_PERMISSION, StaffPermission.administer))


def require_staff(principal: Principal, permission: StaffPermission) -> None:
    """Platform roles govern ``/v1/admin/...`` only; org roles never grant anything here."""
    require_user(principal)
    if principal.platform_role is None:
        raise Forbidden("this route is for platform staff")
    if permission not in STAFF_PERMISSIONS[principal.platform_role]:
        raise Forbidden(f"platform role {principal.platform_role.value!r} may not do this")


def _role_refuses(role: OrgRole, permission: Permission) -> Forbidden:
    return Forbidden(f"the {role.value} role may not do this ({permission.value.replace('_', ' ')})")


def _membership_lookup(*statuses: MembershipStatus) -> Select[OrgStatus, OrgRole, MembershipStatus]:
    """The one membership lookup: the organization's status, the caller's role and the status of
    their membership, for a live organization and a membership in one of ``statuses``."""
    return (
        select(Organization.status, Membership.role, Membership.status)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(
            Organization.id == bindparam("org_id"),
            LIVE,
            Membership.user_id == bindparam("user_id"),
            Membership.status.in_(statuses),
        )
        .limit(1)
    )


#: An active membership of a live organization (what org access is granted on).
MEMBERSHIP = _membership_lookup(MembershipStatus.active)
#: ... or an invitation to it (routes marked ``ALLOW_INVITED``).
MEMBERSHIP_OR_INVITATION = _membership_lookup(MembershipStatus.active, MembershipStatus.invited)
READ_MEMBERSHIP = Read(MEMBERSHIP)
READ_MEMBERSHIP_OR_INVITATION = Read(MEMBERSHIP_OR_INVITATION)


def _granted(row: tuple[OrgStatus, OrgRole] | None) -> OrgRole:
    """The role of an active membership found (``row``): 404 without one, 403 if the org is suspended."""
    if row is None:
        raise NotFound(ORG_NOT_FOUND)
    status, role = row
    if status is OrgStatus.suspended:
        raise Forbidden("this organization is suspended; contact support")
    return role


def _guard_found(
    principal: Principal, org_id: uuid.UUID
) -> tuple[OrgStatus, OrgRole] | Literal[False] | None:
    """What the request's guard found for this principal and ``org_id`` (a live organization, not
    suspended): the active membership's role, None for an invitation; False if it found nothing."""
    guarded = _guarded.get()
    if guarded is None or guarded.token_id != principal.token_id or guarded.org_id != org_id:
        return False
    return (OrgStatus.active, guarded.role) if guarded.membership_status is MembershipStatus.active else None


def _access(principal: Principal, org_id: uuid.UUID, role: OrgRole, permission: Permission) -> OrgAccess:
    if not role_allows(role, permission):
        raise _role_refuses(role, permission)
    return OrgAccess(organization_id=org_id, role=role, principal=principal)


async def org_access(
    session: AsyncSession, principal: Principal, org_id: uuid.UUID, permission: Permission
) -> OrgAccess:
    """The caller's access to ``org_id``; 404 for non-members (existence never leaks), 403 otherwise."""
    if not principal.is_user:
        # An ingest key reaches only the routes made for it; everywhere else its org is unknown to it.
        raise NotFound(ORG_NOT_FOUND)
    found = _guard_found(principal, org_id)
    if found is False:  # no guard ran for this org in this request: look the membership up
        row = (await session.execute(MEMBERSHIP, {"org_id": org_id, "user_id": principal.user_id})).first()
        return _access(principal, org_id, _granted(None if row is None else (row[0], row[1])), permission)
    return _access(principal, org_id, _granted(found), permission)


async def read_access(
    reader: Reader, principal: Principal, org_id: uuid.UUID, permission: Permission
) -> OrgAccess:
    """:func:`org_access` for routes that read through the :class:`~api.db.reads.Reader` and take
    no session: the guard's finding, else the (cached) membership lookup."""
    if not principal.is_user or principal.user_id is None:
        raise NotFound(ORG_NOT_FOUND)
    found = _guard_found(principal, org_id)
    role = await active_role(reader, principal, org_id) if found is False else _granted(found)
    return _access(principal, org_id, role, permission)


def active_role(reader: Reader, principal: Principal, org_id: uuid.UUID) -> Awaitable[OrgRole]:
    """The role of the caller's active membership of ``org_id`` (404/403 as :func:`org_access`),
    from ``cache.memberships`` or one read, whose grant is then kept for ``cache.TTL`` seconds
    (refusals never are); concurrent requests for the same membership share one read. A cached
    grant is answered by ``TtlCache.get_or_load``'s hit path: nothing built, nothing suspended."""
    user_id = principal.user_id
    assert user_id is not None
    return cache.memberships.get_or_load((user_id, org_id), _read_role, reader, org_id, user_id)


async def _read_role(reader: Reader, org_id: uuid.UUID, user_id: uuid.UUID) -> OrgRole:
    """A miss of ``cache.memberships``, looked up through the reader."""
    row = await reader.first(READ_MEMBERSHIP, org_id=org_id, user_id=user_id)
    return _granted(None if row is None else (row[0], row[1]))


async def _session_role(
    sessions: async_sessionmaker[AsyncSession], org_id: uuid.UUID, user_id: uuid.UUID
) -> OrgRole:
    """A miss of ``cache.memberships``, looked up in a session of its own (opened only for it)."""
    async with sessions() as session:
        row = (await session.execute(MEMBERSHIP, {"org_id": org_id, "user_id": user_id})).first()
    return _granted(None if row is None else (row[0], row[1]))


async def org_access_cached(
    sessions: async_sessionmaker[AsyncSession],
    principal: Principal,
    org_id: uuid.UUID,
    permission: Permission,
) -> OrgAccess:
    """:func:`org_access` for routes that need nothing else from the database (flag evaluation).

    A granted membership is kept in ``cache.memberships`` for ``cache.TTL`` seconds (the same
    entries, and the same ``TtlCache.get_or_load``, as :func:`active_role`), so a member asking
    again costs no session; a miss opens one, only for the check, shared by the requests that miss
    together. Refusals (404, 403) are never cached, nor a grant read across an invalidation.
    Removal, a role change, suspension and deletion clear the cache in-process; see
    ``api/auth/cache.py`` for the bound everywhere else.
    """
    if not principal.is_user or principal.user_id is None:
        raise NotFound(ORG_NOT_FOUND)
    found = _guard_found(principal, org_id)
    if found is False:
        key = (principal.user_id, org_id)
        role = await cache.memberships.get_or_load(key, _session_role, sessions, org_id, principal.user_id)
    else:
        role = _granted(found)
    return _access(principal, org_id, role, permission)


@dataclass(frozen=True, slots=True)
class GuardedMembership:
    """What :func:`guard_org` read for this request, so the handler's :func:`org_access` need not
    read the membership again (one lookup per org request)."""

    token_id: uuid.UUID
    org_id: uuid.UUID
    role: OrgRole
    membership_status: MembershipStatus


#: The request's guard finding. A context variable because the guard runs in the ``before_request``
#: hook and the handler's ``org_access`` in the same request task, with no request object between.
_guarded: ContextVar[GuardedMembership | None] = ContextVar("keel_guarded_membership", default=None)


#: Route options understood by :func:`guard_org`.
ALLOW_INVITED = "allow_invited"  # the invitee may call it before accepting
ALLOW_ORG_KEY = "allow_org_key"  # the organization's own ingest key may call it


async def guard_org(
    reader: Reader, principal: Principal, org_id: uuid.UUID, *, opt: Mapping[str, Any]
) -> None:
    """Tenant isolation for every ``/v1/orgs/{org_id}/...`` route, before anything else is read.

    Someone with no live tie to the organization gets 404, never a hint that it exists. An active
    member's grant comes from ``cache.memberships`` when it is there (:func:`active_role`), so a
    member's request usually costs no read here; an invitee (``ALLOW_INVITED``) is always read.
    """
    if principal.kind is TokenKind.org_ingest:
        if not opt.get(ALLOW_ORG_KEY) or principal.organization_id != org_id:
            raise NotFound(ORG_NOT_FOUND)
        return
    if not principal.is_user or principal.user_id is None:
        raise NotFound(ORG_NOT_FOUND)
    if opt.get(ALLOW_INVITED):
        row = await reader.first(READ_MEMBERSHIP_OR_INVITATION, org_id=org_id, user_id=principal.user_id)
        role = _granted(None if row is None else (row[0], row[1]))
        assert row is not None
        membership_status: MembershipStatus = row[2]
    else:
        role, membership_status = await active_role(reader, principal, org_id), MembershipStatus.active
    _guarded.set(GuardedMembership(principal.token_id, org_id, role, membership_status))


def forget_guarded_membership() -> None:
    """Start of every request: nothing the guard found for an earlier request applies to this one
    (a request task starts with none: a ``set`` only when one is there, as ``get`` costs less)."""
    if _guarded.get() is not None:
        _guarded.set(None)


def ingest_target(principal: Principal, org_id: uuid.UUID | None) -> uuid.UUID:
    """The organization an ingest key writes to: its own, or (platform keys) the one named.
    Whether it is live is for the caller to check (:func:`ingest_org`, or in the write itself)."""
    if principal.kind is TokenKind.org_ingest:
        assert principal.organization_id is not None
        if org_id is not None and org_id != principal.organization_id:
            raise Forbidden("an org ingest key writes only to its own organization")
        return principal.organization_id
    if principal.kind is TokenKind.platform_ingest:
        if org_id is None:
            raise Forbidden("a platform ingest key must name the org_id")
        return org_id
    raise Forbidden("this route needs an ingest key")


async def ingest_org(session: AsyncSession, principal: Principal, org_id: uuid.UUID | None) -> uuid.UUID:
    """The organization an ingest key writes to: its own, or (platform keys) the one named, if live."""
    target = ingest_target(principal, org_id)
    org = await session.get(Organization, target)
    if not is_live(org):
        raise NotFound(ORG_NOT_FOUND)
    if org.status is OrgStatus.suspended:
        raise Forbidden("this organization is suspended")
    return target
