"""Console sign-in: one-time links, token exchange, and the browser sessions they open.

A session is an opaque random secret in an HttpOnly, SameSite=Strict cookie; the database keeps its
SHA-256 digest. Every console request resolves it afresh (no cache), so sign-out, a disabled user
and a lost platform role end the session on the next request. The CSRF token of a session is an
HMAC of its secret: nothing more to store, and it changes with each session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.models import User, UserStatus
from api.auth.secrets import digest
from api.console.models import ConsoleLoginLink, ConsoleSession
from api.db.base import utcnow
from api.emails import email_key
from api.errors import Forbidden, NotFound, Unauthorized
from api.settings import Settings
from api.tokens.models import TokenKind

#: The session cookie (``__Host-`` needs Secure, so the name follows the setting).
COOKIE = "keel_console"
SECURE_COOKIE = "__Host-keel_console"
#: The sign-in form's own CSRF cookie (double submit), before there is a session.
PRE_COOKIE = "keel_console_signin"
LINK_PREFIX = "keel_cl_"
SESSION_PREFIX = "keel_cs_"
#: ``last_seen_at`` is written at most this often per session (the idle time is counted from it).
TOUCH_SECONDS = 60


def cookie_name(settings: Settings) -> str:
    return SECURE_COOKIE if settings.console_secure_cookie else COOKIE


def csrf_token(session_secret: str) -> str:
    """The CSRF token every console form carries: bound to the session, useless without it."""
    return hmac.new(session_secret.encode(), b"keel-console-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_secret: str, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(csrf_token(session_secret), sent)


@dataclass(frozen=True, slots=True)
class Opened:
    secret: str
    user: User


async def _staff_user(session: AsyncSession, email: str) -> User:
    user = await session.scalar(select(User).where(email_key(User.email) == email_key(email)))
    if user is None:
        raise NotFound(f"no user has the email {email!r}")
    if user.status is UserStatus.disabled or user.platform_role is None:
        raise Forbidden("only platform staff (admin or support) can sign in to the console")
    return user


async def create_link(session: AsyncSession, *, email: str, settings: Settings) -> tuple[str, User]:
    """A one-time sign-in link's secret for a staff member (``keel console login --email E``)."""
    user = await _staff_user(session, email)
    secret = LINK_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ConsoleLoginLink(
            user_id=user.id,
            secret_hash=digest(secret),
            expires_at=utcnow() + timedelta(seconds=settings.console_link_ttl),
        )
    )
    await session.flush()
    return secret, user


async def _open(
    session: AsyncSession, *, user: User, method: str, settings: Settings, ctx: RequestContext
) -> Opened:
    now = utcnow()
    secret = SESSION_PREFIX + secrets.token_urlsafe(32)
    row = ConsoleSession(
        user_id=user.id, secret_hash=digest(secret), method=method, last_seen_at=now,
        expires_at=now + timedelta(seconds=settings.console_max_age), ip=ctx.ip, user_agent=ctx.user_agent,
    )  # fmt: skip
    session.add(row)
    await session.flush()
    await audit.record(
        session, action="staff.console_signed_in", actor=Actor.of(_principal(row, user), as_staff=True),
        ctx=ctx, organization_id=None, resource_type="console_session", resource_id=row.id,
        metadata={"method": method},
    )  # fmt: skip
    return Opened(secret, user)


async def redeem_link(
    session: AsyncSession, *, secret: str, settings: Settings, ctx: RequestContext
) -> Opened:
    """Use a sign-in link (once): a new session for its staff member."""
    link = await session.scalar(
        select(ConsoleLoginLink).where(ConsoleLoginLink.secret_hash == digest(secret)).with_for_update()
    )
    if link is None:
        raise Unauthorized("this sign-in link is not valid")
    if link.used_at is not None:
        raise Unauthorized("this sign-in link has been used already; ask for a new one")
    if link.expires_at <= utcnow():
        raise Unauthorized("this sign-in link has expired; ask for a new one")
    link.used_at = utcnow()
    user = await session.get(User, link.user_id)
    if user is None or user.status is UserStatus.disabled or user.platform_role is None:
        raise Forbidden("only platform staff (admin or support) can sign in to the console")
    return await _open(session, user=user, method="link", settings=settings, ctx=ctx)


async def exchange_token(
    session: AsyncSession, *, token: str, settings: Settings, ctx: RequestContext
) -> Opened:
    """A staff member's user token, exchanged once for a session (the token itself stays valid)."""
    principal = await auth.authenticate(
        session, auth.bearer_secret(f"Bearer {token.strip()}"), touch_interval=settings.token_touch_interval
    )
    if principal.kind is not TokenKind.user or principal.user_id is None:
        raise Forbidden("sign in with a user token, not an ingest key")
    user = await session.get(User, principal.user_id)
    if user is None or user.platform_role is None:
        raise Forbidden("only platform staff (admin or support) can sign in to the console")
    return await _open(session, user=user, method="token", settings=settings, ctx=ctx)


def _principal(row: ConsoleSession, user: User) -> Principal:
    return Principal(
        token_id=row.id, kind=TokenKind.user, user_id=user.id, email=user.email,
        platform_role=user.platform_role,
    )  # fmt: skip


async def resolve(session: AsyncSession, *, secret: str | None, settings: Settings) -> Principal:
    """The staff member a session cookie belongs to, read fresh; 401 when there is none any more.

    A session whose user was disabled or lost the platform role is revoked here, for good."""
    if not secret:
        raise Unauthorized("sign in to the console")
    found = (
        await session.execute(
            select(ConsoleSession, User)
            .join(User, User.id == ConsoleSession.user_id)
            .where(ConsoleSession.secret_hash == digest(secret))
        )
    ).one_or_none()
    if found is None:
        raise Unauthorized("sign in to the console")
    row, user = found
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthorized("this session has ended; sign in again")
    if row.expires_at <= now or now - row.last_seen_at > timedelta(seconds=settings.console_idle_timeout):
        raise Unauthorized("this session has expired; sign in again")
    if user.status is UserStatus.disabled or user.platform_role is None:
        row.revoked_at = now
        await session.commit()
        raise Unauthorized("this account may no longer use the console")
    if now - row.last_seen_at > timedelta(seconds=TOUCH_SECONDS):
        await session.execute(
            update(ConsoleSession).where(ConsoleSession.id == row.id).values(last_seen_at=now)
        )
    return _principal(row, user)


async def sign_out(
    session: AsyncSession, *, session_id: uuid.UUID, actor: Actor, ctx: RequestContext
) -> None:
    await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await audit.record(
        session, action="staff.console_signed_out", actor=actor, ctx=ctx, organization_id=None,
        resource_type="console_session", resource_id=session_id,
    )  # fmt: skip
