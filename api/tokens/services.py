"""User tokens, org ingest keys and platform ingest keys: create (secret shown once), list, revoke."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth import cache, secrets
from api.auth.context import Actor, RequestContext
from api.db.base import utcnow
from api.errors import NotFound
from api.pagination import decode_cursor
from api.tokens.models import ApiToken, TokenKind

ACTION_NOUN = {
    TokenKind.user: "token",
    TokenKind.org_ingest: "ingest_key",
    TokenKind.platform_ingest: "platform_ingest_key",
}


#: Publishable keys are audited under nouns of their own: a key in a web page is another matter.
PUBLISHABLE_NOUN = {
    TokenKind.org_ingest: "publishable_key",
    TokenKind.platform_ingest: "platform_publishable_key",
}


def action_noun(kind: TokenKind, *, publishable: bool = False) -> str:
    return PUBLISHABLE_NOUN[kind] if publishable else ACTION_NOUN[kind]


def normalize_origins(origins: list[str] | None) -> list[str] | None:
    """Origins compare as browsers send them: lower-case, without a trailing slash, each once."""
    if origins is None:
        return None
    return sorted({origin.lower().rstrip("/") for origin in origins})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def create_token(
    session: AsyncSession,
    *,
    kind: TokenKind,
    name: str,
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None = None,
    organization_id: uuid.UUID | None = None,
    created_by: uuid.UUID | None = None,
    expires_in_days: int | None = None,
    publishable: bool = False,
    allowed_origins: list[str] | None = None,
) -> tuple[ApiToken, str]:
    secret, prefix, digest = secrets.generate(kind, publishable=publishable)
    origins = normalize_origins(allowed_origins)
    token = ApiToken(
        kind=kind,
        name=name,
        prefix=prefix,
        secret_hash=digest,
        user_id=user_id,
        organization_id=organization_id,
        created_by=created_by,
        expires_at=utcnow() + timedelta(days=expires_in_days) if expires_in_days else None,
        publishable=publishable,
        allowed_origins=origins,
    )
    session.add(token)
    await session.flush()
    noun = action_noun(kind, publishable=publishable)
    after: dict[str, object] = {"name": name, "prefix": prefix, "expires_at": _iso(token.expires_at)}
    if publishable or origins is not None:
        after["allowed_origins"] = origins
    await audit.record(
        session, action=f"{noun}.created", actor=actor, ctx=ctx, organization_id=organization_id,
        resource_type=noun, resource_id=token.id, after=after,
    )  # fmt: skip
    return token, secret


async def list_tokens(
    session: AsyncSession,
    *,
    kind: TokenKind,
    cursor: str | None,
    limit: int,
    user_id: uuid.UUID | None = None,
    organization_id: uuid.UUID | None = None,
) -> list[ApiToken]:
    after = decode_cursor(cursor)
    query = select(ApiToken).where(ApiToken.kind == kind).order_by(ApiToken.id).limit(limit + 1)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    if organization_id is not None:
        query = query.where(ApiToken.organization_id == organization_id)
    if after is not None:
        query = query.where(ApiToken.id > after)
    return list((await session.scalars(query)).all())


async def revoke_token(
    session: AsyncSession,
    *,
    token_id: uuid.UUID,
    kind: TokenKind,
    actor: Actor,
    ctx: RequestContext | None,
    user_id: uuid.UUID | None = None,
    organization_id: uuid.UUID | None = None,
) -> None:
    """Revoke a token the caller owns. Revoking twice is a no-op; someone else's token is 404."""
    query = select(ApiToken).where(ApiToken.id == token_id, ApiToken.kind == kind).with_for_update()
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    if organization_id is not None:
        query = query.where(ApiToken.organization_id == organization_id)
    token = await session.scalar(query)
    if token is None:
        raise NotFound(f"{ACTION_NOUN[kind].replace('_', ' ')} not found")
    if token.revoked_at is not None:
        return
    token.revoked_at = utcnow()
    cache.invalidate_after_commit(session)
    await session.flush()
    noun = action_noun(kind, publishable=token.publishable)
    await audit.record(
        session, action=f"{noun}.revoked", actor=actor, ctx=ctx, organization_id=organization_id,
        resource_type=noun, resource_id=token.id,
        before={"name": token.name, "prefix": token.prefix},
    )  # fmt: skip
