"""Webhook endpoints: create, change, disable, delete, secrets and their rotation, recovery, stats."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.db.base import utcnow
from api.errors import Conflict, NotFound, ValidationFailed
from api.pagination import decode_cursor
from api.webhooks import signing, ssrf
from api.webhooks.messages import NOTIFY_CHANNEL, check_filters, publish
from api.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from api.webhooks.schemas import EndpointCreate, EndpointStats, EndpointUpdate

ROTATION_OVERLAP = timedelta(hours=24)
STATS_WINDOW = timedelta(hours=24)
RESOURCE = "webhook_endpoint"
#: Deliveries waiting for an attempt; parked (next_attempt_at NULL) when their endpoint stops.
WAITING = (DeliveryStatus.pending, DeliveryStatus.failed)


def snapshot(e: WebhookEndpoint) -> dict[str, Any]:
    return {
        "url": e.url, "description": e.description, "event_types": list(e.event_types),
        "enabled": e.enabled, "disabled_reason": e.disabled_reason,
    }  # fmt: skip


def active_secrets(e: WebhookEndpoint, now: datetime) -> list[str]:
    """The secrets that sign a delivery now: the current one, and a rotated-out one for 24 h."""
    keep_old = e.previous_secret and e.previous_secret_expires_at and e.previous_secret_expires_at > now
    return [e.secret, e.previous_secret] if keep_old else [e.secret]  # type: ignore[list-item]


async def get_endpoint(
    session: AsyncSession, *, org_id: uuid.UUID, endpoint_id: uuid.UUID, lock: bool = False
) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id,
        WebhookEndpoint.organization_id == org_id,
        WebhookEndpoint.deleted_at.is_(None),
    )
    endpoint = await session.scalar(query.with_for_update() if lock else query)
    if endpoint is None:
        raise NotFound("webhook endpoint not found")
    return endpoint


async def list_endpoints(
    session: AsyncSession, *, org_id: uuid.UUID, cursor: str | None, limit: int
) -> list[WebhookEndpoint]:
    after = decode_cursor(cursor)
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.organization_id == org_id, WebhookEndpoint.deleted_at.is_(None))
        .order_by(WebhookEndpoint.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(WebhookEndpoint.id > after)
    return list((await session.scalars(query)).all())


async def create_endpoint(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    data: EndpointCreate,
    allow_private: bool,
    actor: Actor,
    ctx: RequestContext | None,
) -> WebhookEndpoint:
    url = await ssrf.validate_url(data.url, allow_private=allow_private)
    now = utcnow()
    endpoint = WebhookEndpoint(
        organization_id=org_id, url=url, description=data.description,
        event_types=check_filters(data.event_types), enabled=data.enabled,
        disabled_reason=None if data.enabled else "created disabled",
        disabled_at=None if data.enabled else now,
        secret=signing.new_secret(),
    )  # fmt: skip
    session.add(endpoint)
    await session.flush()
    await audit.record(
        session, action=f"{RESOURCE}.created", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type=RESOURCE, resource_id=endpoint.id, after=snapshot(endpoint),
    )  # fmt: skip
    return endpoint


async def _park_deliveries(session: AsyncSession, endpoint_id: uuid.UUID, reason: str) -> None:
    """Waiting deliveries of a stopped endpoint stay ``failed`` with no next attempt (recoverable)."""
    await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status.in_(WAITING),
            WebhookDelivery.next_attempt_at.is_not(None),
        )
        .values(
            status=DeliveryStatus.failed, next_attempt_at=None, last_error=reason[:500], updated_at=utcnow()
        )
    )


async def disable_endpoint(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    *,
    reason: str,
    actor: Actor,
    ctx: RequestContext | None,
    record: bool = True,
) -> None:
    """Disable, park what was waiting, and tell the organization's other endpoints."""
    now = utcnow()
    before = snapshot(endpoint)
    endpoint.enabled, endpoint.disabled_reason, endpoint.disabled_at = False, reason[:500], now
    await session.flush()
    await _park_deliveries(session, endpoint.id, f"endpoint disabled: {reason}")
    if record:
        await audit.record(
            session, action=f"{RESOURCE}.disabled", actor=actor, ctx=ctx,
            organization_id=endpoint.organization_id, resource_type=RESOURCE, resource_id=endpoint.id,
            before=before, after=snapshot(endpoint),
        )  # fmt: skip
    await publish(
        session, organization_id=endpoint.organization_id, event_type="webhook.endpoint_disabled",
        payload={
            "endpoint_id": str(endpoint.id), "url": endpoint.url, "reason": endpoint.disabled_reason,
            "disabled_at": now.isoformat(), "failing_since": endpoint.failing_since.isoformat()
            if endpoint.failing_since else None,
        },
    )  # fmt: skip


async def update_endpoint(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    data: EndpointUpdate,
    allow_private: bool,
    actor: Actor,
    ctx: RequestContext | None,
) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id, lock=True)
    before = snapshot(endpoint)
    if data.url is not msgspec.UNSET:
        endpoint.url = await ssrf.validate_url(data.url, allow_private=allow_private)
    if data.description is not msgspec.UNSET:
        endpoint.description = data.description
    if data.event_types is not msgspec.UNSET:
        endpoint.event_types = check_filters(data.event_types)
    enabled = endpoint.enabled if data.enabled is msgspec.UNSET else data.enabled
    reason = data.disabled_reason if data.disabled_reason is not msgspec.UNSET else None
    if enabled and reason:
        raise ValidationFailed("disabled_reason: goes with `enabled: false`", field="disabled_reason")
    if enabled and not endpoint.enabled:
        endpoint.enabled, endpoint.disabled_reason, endpoint.disabled_at = True, None, None
        endpoint.failing_since = None
    elif not enabled and endpoint.enabled:
        await disable_endpoint(
            session, endpoint, reason=reason or "disabled by a user", actor=actor, ctx=ctx, record=False
        )
    elif not enabled and reason:
        endpoint.disabled_reason = reason
    await session.flush()
    if snapshot(endpoint) != before:
        await audit.record(
            session, action=f"{RESOURCE}.updated", actor=actor, ctx=ctx, organization_id=org_id,
            resource_type=RESOURCE, resource_id=endpoint.id, before=before, after=snapshot(endpoint),
        )  # fmt: skip
    return endpoint


async def delete_endpoint(
    session: AsyncSession, *, org_id: uuid.UUID, endpoint_id: uuid.UUID, actor: Actor, ctx: RequestContext
) -> None:
    """Soft delete: its deliveries and attempts stay readable; nothing more is sent to it."""
    endpoint = await get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id, lock=True)
    before = snapshot(endpoint)
    endpoint.deleted_at, endpoint.enabled = utcnow(), False
    await session.flush()
    await _park_deliveries(session, endpoint.id, "endpoint deleted")
    await audit.record(
        session, action=f"{RESOURCE}.deleted", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type=RESOURCE, resource_id=endpoint.id, before=before,
    )  # fmt: skip


async def read_secret(
    session: AsyncSession, *, org_id: uuid.UUID, endpoint_id: uuid.UUID, actor: Actor, ctx: RequestContext
) -> tuple[str, str | None, datetime | None]:
    endpoint = await get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id)
    # Reading a signing secret is worth a line in the audit log, like reading it in a vault.
    await audit.record(
        session, action=f"{RESOURCE}.secret_viewed", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type=RESOURCE, resource_id=endpoint.id,
    )  # fmt: skip
    return _secrets(endpoint)


def _secrets(endpoint: WebhookEndpoint) -> tuple[str, str | None, datetime | None]:
    secrets = active_secrets(endpoint, utcnow())
    if len(secrets) == 2:
        return endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at
    return endpoint.secret, None, None


async def rotate_secret(
    session: AsyncSession, *, org_id: uuid.UUID, endpoint_id: uuid.UUID, actor: Actor, ctx: RequestContext
) -> tuple[str, str | None, datetime | None]:
    """A new secret signs from now on; the old one keeps signing beside it for 24 hours."""
    endpoint = await get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id, lock=True)
    now = utcnow()
    endpoint.previous_secret, endpoint.previous_secret_expires_at = endpoint.secret, now + ROTATION_OVERLAP
    endpoint.secret = signing.new_secret()
    await session.flush()
    await audit.record(
        session, action=f"{RESOURCE}.secret_rotated", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type=RESOURCE, resource_id=endpoint.id,
        metadata={"previous_secret_expires_at": endpoint.previous_secret_expires_at.isoformat()},
    )  # fmt: skip
    return _secrets(endpoint)


async def recover(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    since: datetime,
    actor: Actor,
    ctx: RequestContext,
    reason: str | None = None,
) -> int:
    """Send again every delivery to this endpoint that failed (or ran out of attempts) since ``since``.
    ``reason`` (the console asks staff for one) is kept in the audit entry's metadata."""
    endpoint = await get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id, lock=True)
    now = utcnow()
    if since > now:
        raise ValidationFailed("since: is in the future", field="since")
    if not endpoint.enabled:
        raise Conflict("the endpoint is disabled; enable it before recovering its deliveries")
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.created_at >= since,
            WebhookDelivery.status.in_((DeliveryStatus.failed, DeliveryStatus.exhausted)),
        )
        .values(status=DeliveryStatus.pending, next_attempt_at=now, updated_at=now)
        .returning(WebhookDelivery.id)
    )
    requeued = len(result.all())
    if requeued:
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    await audit.record(
        session, action=f"{RESOURCE}.recovered", actor=actor, ctx=ctx, organization_id=org_id,
        resource_type=RESOURCE, resource_id=endpoint.id,
        metadata={"since": since.isoformat(), "requeued": requeued, **({"reason": reason} if reason else {})},
    )  # fmt: skip
    return requeued


STATS = text(
    """
    SELECT count(*) AS attempts,
           count(*) FILTER (WHERE status_code BETWEEN 200 AND 299) AS succeeded,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95
    FROM webhook_attempts
    WHERE endpoint_id = :endpoint_id AND started_at >= :since
    """
)


async def stats(session: AsyncSession, *, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> EndpointStats:
    """The last 24 hours: attempts, success rate, latency; deliveries created in the window by status."""
    endpoint = await get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id)
    now = utcnow()
    since = now - STATS_WINDOW
    row = (await session.execute(STATS, {"endpoint_id": endpoint.id, "since": since})).one()
    by_status = dict(
        (
            await session.execute(
                select(WebhookDelivery.status, func.count())
                .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.created_at >= since)
                .group_by(WebhookDelivery.status)
            )
        ).all()
    )
    attempts, succeeded = row.attempts, row.succeeded
    return EndpointStats(
        window_start=since, window_end=now, attempts=attempts, succeeded=succeeded,
        failed=attempts - succeeded, success_rate=round(succeeded / attempts, 4) if attempts else None,
        p50_latency_ms=float(row.p50) if row.p50 is not None else None,
        p95_latency_ms=float(row.p95) if row.p95 is not None else None,
        deliveries={s.value: by_status.get(s, 0) for s in DeliveryStatus},
    )  # fmt: skip
