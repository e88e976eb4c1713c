"""Managing an organization's audit streams (owners and admins): every change audited, every URL
checked as webhook endpoints' are, credentials sealed before they are stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.audit.models import AuditChainHead, AuditEntry
from api.audit.streams.destinations import Target, s3_location
from api.audit.streams.models import AuditStream, StreamStatus, StreamType
from api.audit.streams.schemas import StreamCreate, StreamUpdate
from api.audit.streams.secrets import Sealer
from api.auth.context import Actor, RequestContext
from api.db.base import new_id, utcnow
from api.errors import Conflict, NotFound, ValidationFailed
from api.pagination import decode_cursor
from api.settings import Settings
from api.webhooks import signing, ssrf

RESOURCE = "audit_stream"
#: The types that cannot send without a credential.
NEEDS_TOKEN = frozenset({StreamType.splunk_hec, StreamType.datadog, StreamType.s3})


def snapshot(s: AuditStream) -> dict[str, Any]:
    """What an audit entry says about a stream: never its credentials, the URL cut before ``?``."""
    return {
        "name": s.name,
        "type": s.type.value,
        "url": s.url.split("?", 1)[0].split("#", 1)[0],
        "format": s.format.value,
        "status": s.status.value,
    }


async def check_destination(type_: StreamType, url: str, token: str | None, *, allow_private: bool) -> str:
    """The URL as stored, or a 422 naming ``url`` or ``token``."""
    url = await ssrf.validate_url(url, allow_private=allow_private)
    if type_ in NEEDS_TOKEN and not token:
        raise ValidationFailed(
            f"token: a {type_.value} stream needs the destination's credential", field="token"
        )
    if type_ is StreamType.s3:
        _, bucket, _, _ = s3_location(url)
        if not bucket:
            raise ValidationFailed(
                "url: an s3 stream's URL names its bucket: https://host/bucket[/prefix]", field="url"
            )
        if token and (":" not in token or token.startswith(":") or token.endswith(":")):
            raise ValidationFailed(
                "token: an s3 stream's token is ACCESS_KEY_ID:SECRET_ACCESS_KEY", field="token"
            )
    return url


async def get_stream(
    session: AsyncSession, *, org_id: uuid.UUID, stream_id: uuid.UUID, lock: bool = False
) -> AuditStream:
    query = select(AuditStream).where(AuditStream.id == stream_id, AuditStream.organization_id == org_id)
    stream = await session.scalar(query.with_for_update() if lock else query)
    if stream is None:
        raise NotFound("audit stream not found")
    return stream


async def list_streams(
    session: AsyncSession, *, org_id: uuid.UUID, cursor: str | None, limit: int
) -> list[AuditStream]:
    after = decode_cursor(cursor)
    query = (
        select(AuditStream)
        .where(AuditStream.organization_id == org_id)
        .order_by(AuditStream.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(AuditStream.id > after)
    return list((await session.scalars(query)).all())


async def lags(session: AsyncSession, streams: list[AuditStream]) -> dict[uuid.UUID, tuple[int, float]]:
    """Each stream's backlog: entries recorded past ``delivered_seq``, and the oldest one's age in seconds."""
    if not streams:
        return {}
    chains = {str(s.organization_id) for s in streams}
    heads = dict(
        (
            await session.execute(
                select(AuditChainHead.chain_key, AuditChainHead.seq).where(
                    AuditChainHead.chain_key.in_(chains)
                )
            )
        )
        .tuples()
        .all()
    )
    now = datetime.now(UTC)
    out: dict[uuid.UUID, tuple[int, float]] = {}
    for s in streams:
        head = heads.get(str(s.organization_id), 0)
        if head <= s.delivered_seq:
            out[s.id] = (0, 0.0)
            continue
        oldest = await session.scalar(
            select(func.min(AuditEntry.recorded_at)).where(
                and_(AuditEntry.chain_key == str(s.organization_id), AuditEntry.seq == s.delivered_seq + 1)
            )
        )
        out[s.id] = (head - s.delivered_seq, max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
    return out


async def create_stream(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    data: StreamCreate,
    settings: Settings,
    actor: Actor,
    ctx: RequestContext | None,
) -> tuple[AuditStream, str | None]:
    """A new stream, starting from the oldest entry still kept; returns it and an https stream's secret."""
    url = await check_destination(
        data.type, data.url, data.token, allow_private=settings.webhook_allow_private_targets
    )
    sealer = Sealer.of(settings)
    stream_id = new_id()
    secret = signing.new_secret() if data.type is StreamType.https else None
    stream = AuditStream(
        id=stream_id,
        organization_id=org_id,
        name=data.name,
        type=data.type,
        url=url,
        format=data.format,
        token_ciphertext=sealer.seal(stream_id, data.token) if data.token else None,
        secret_ciphertext=sealer.seal(stream_id, secret) if secret else None,
        status=StreamStatus.active,
        delivered_seq=0,
        delivered_checkpoint_seq=0,
        failures=0,
        next_attempt_at=utcnow(),
    )
    session.add(stream)
    await _flush_named(session, data.name)
    await audit.record(
        session,
        action=f"{RESOURCE}.created",
        actor=actor,
        ctx=ctx,
        organization_id=org_id,
        resource_type=RESOURCE,
        resource_id=stream.id,
        after=snapshot(stream),
    )
    return stream, secret


async def _flush_named(session: AsyncSession, name: str) -> None:
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict(f"the organization already has an audit stream named {name!r}") from None


async def update_stream(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    stream_id: uuid.UUID,
    data: StreamUpdate,
    settings: Settings,
    actor: Actor,
    ctx: RequestContext | None,
) -> AuditStream:
    stream = await get_stream(session, org_id=org_id, stream_id=stream_id, lock=True)
    before = snapshot(stream)
    sealer = Sealer.of(settings)
    token = data.token if data.token is not msgspec.UNSET else None
    if data.url is not msgspec.UNSET or token is not None:
        has = token or (sealer.open(stream.id, stream.token_ciphertext) if stream.token_ciphertext else None)
        url = stream.url if data.url is msgspec.UNSET else data.url
        stream.url = await check_destination(
            stream.type, url, has, allow_private=settings.webhook_allow_private_targets
        )
    if token is not None:
        stream.token_ciphertext = sealer.seal(stream.id, token)
    if data.name is not msgspec.UNSET:
        stream.name = data.name
    if data.format is not msgspec.UNSET:
        stream.format = data.format
    await _flush_named(session, stream.name)
    if snapshot(stream) != before or token is not None:
        await audit.record(
            session,
            action=f"{RESOURCE}.updated",
            actor=actor,
            ctx=ctx,
            organization_id=org_id,
            resource_type=RESOURCE,
            resource_id=stream.id,
            before=before,
            after=snapshot(stream),
            metadata={"token_changed": token is not None},
        )
    return stream


async def set_paused(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    stream_id: uuid.UUID,
    paused: bool,
    actor: Actor,
    ctx: RequestContext | None,
) -> AuditStream:
    """Pause an active stream, or resume a paused or disabled one (from where it stopped)."""
    stream = await get_stream(session, org_id=org_id, stream_id=stream_id, lock=True)
    before = snapshot(stream)
    if paused:
        if stream.status is not StreamStatus.active:
            raise Conflict(f"the stream is {stream.status.value}; only an active stream can be paused")
        stream.status = StreamStatus.paused
    else:
        if stream.status is StreamStatus.active:
            raise Conflict("the stream is already active")
        stream.status, stream.disabled_reason, stream.disabled_at = StreamStatus.active, None, None
        stream.failures, stream.failing_since, stream.next_attempt_at = 0, None, utcnow()
    await session.flush()
    action = "audit_stream.paused" if paused else "audit_stream.resumed"
    await audit.record(
        session,
        action=action,
        actor=actor,
        ctx=ctx,
        organization_id=org_id,
        resource_type=RESOURCE,
        resource_id=stream.id,
        before=before,
        after=snapshot(stream),
    )
    return stream


async def delete_stream(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    stream_id: uuid.UUID,
    actor: Actor,
    ctx: RequestContext | None,
) -> None:
    """Gone for good: its credentials with it, and it holds back no pruning."""
    stream = await get_stream(session, org_id=org_id, stream_id=stream_id, lock=True)
    before = snapshot(stream)
    await session.delete(stream)
    await session.flush()
    await audit.record(
        session,
        action=f"{RESOURCE}.deleted",
        actor=actor,
        ctx=ctx,
        organization_id=org_id,
        resource_type=RESOURCE,
        resource_id=stream_id,
        before=before,
    )


def target_of(stream: AuditStream, sealer: Sealer) -> Target:
    return Target(
        stream_id=stream.id,
        organization_id=stream.organization_id,
        type=stream.type,
        url=stream.url,
        format=stream.format,
        token=sealer.open(stream.id, stream.token_ciphertext) if stream.token_ciphertext else None,
        secret=sealer.open(stream.id, stream.secret_ciphertext) if stream.secret_ciphertext else None,
    )
