"""Reading deliveries and their attempts, and sending one again by hand."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.db.base import utcnow
from api.db.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookMessage
from api.errors import Conflict, NotFound
from api.pagination import decode_cursor
from api.webhooks.messages import NOTIFY_CHANNEL
from api.webhooks.schemas import FailingEndpoint

RESOURCE = "webhook_delivery"


async def list_deliveries(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    cursor: str | None,
    limit: int,
    status: DeliveryStatus | None = None,
    endpoint_id: uuid.UUID | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
) -> list[WebhookDelivery]:
    """Newest first. ``event_type`` is exact, or a prefix when it ends in ``.*``."""
    after = decode_cursor(cursor)
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.organization_id == org_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(WebhookDelivery.id < after)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if event_type is not None:
        if event_type.endswith(".*"):
            prefix = event_type[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(WebhookDelivery.event_type.like(prefix + "%", escape="\\"))
        elif event_type != "*":
            query = query.where(WebhookDelivery.event_type == event_type)
    if since is not None:
        query = query.where(WebhookDelivery.created_at >= since)
    return list((await session.scalars(query)).all())


async def get_delivery(
    session: AsyncSession, *, delivery_id: uuid.UUID, org_id: uuid.UUID | None, lock: bool = False
) -> WebhookDelivery:
    """One delivery of ``org_id`` (of any organization when ``None``: staff)."""
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
    if org_id is not None:
        query = query.where(WebhookDelivery.organization_id == org_id)
    delivery = await session.scalar(query.with_for_update() if lock else query)
    if delivery is None:
        raise NotFound("webhook delivery not found")
    return delivery


async def delivery_detail(
    session: AsyncSession, *, delivery_id: uuid.UUID, org_id: uuid.UUID
) -> tuple[WebhookDelivery, WebhookMessage, list[WebhookAttempt]]:
    delivery = await get_delivery(session, delivery_id=delivery_id, org_id=org_id)
    message = await session.get(WebhookMessage, delivery.webhook_message_id)
    assert message is not None
    attempts = list(
        (
            await session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery.id)
                .order_by(WebhookAttempt.attempt_number, WebhookAttempt.started_at)
            )
        ).all()
    )
    return delivery, message, attempts


async def retry_delivery(
    session: AsyncSession,
    *,
    delivery_id: uuid.UUID,
    org_id: uuid.UUID | None,
    actor: Actor,
    ctx: RequestContext,
) -> WebhookDelivery:
    """One more attempt, now; if it fails the schedule resumes where it was (or it is exhausted)."""
    delivery = await get_delivery(session, delivery_id=delivery_id, org_id=org_id, lock=True)
    if delivery.status is DeliveryStatus.delivering:
        raise Conflict("an attempt of this delivery is in flight; wait for its outcome")
    endpoint = await session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise Conflict("the endpoint of this delivery has been deleted")
    if not endpoint.enabled:
        raise Conflict("the endpoint of this delivery is disabled; enable it first")
    before = {"status": delivery.status.value, "attempts": delivery.attempts}
    now = utcnow()
    delivery.status, delivery.next_attempt_at, delivery.updated_at = DeliveryStatus.pending, now, now
    await session.flush()
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    await audit.record(
        session, action=f"{RESOURCE}.retried", actor=actor, ctx=ctx, organization_id=delivery.organization_id,
        resource_type=RESOURCE, resource_id=delivery.id, before=before,
        after={"status": delivery.status.value, "attempts": delivery.attempts},
    )  # fmt: skip
    return delivery


async def failing_endpoints(session: AsyncSession, *, org_id: uuid.UUID) -> list[FailingEndpoint]:
    """Endpoints that are disabled, in a run of failures, or had failed deliveries in the last day."""
    since = utcnow() - timedelta(hours=24)
    failed_recently = (
        select(func.count())
        .where(
            WebhookDelivery.endpoint_id == WebhookEndpoint.id,
            WebhookDelivery.created_at >= since,
            WebhookDelivery.status.in_((DeliveryStatus.failed, DeliveryStatus.exhausted)),
        )
        .correlate(WebhookEndpoint)
        .scalar_subquery()
    )
    last_error = (
        select(WebhookDelivery.last_error)
        .where(WebhookDelivery.endpoint_id == WebhookEndpoint.id, WebhookDelivery.last_error.is_not(None))
        .order_by(WebhookDelivery.updated_at.desc())
        .limit(1)
        .correlate(WebhookEndpoint)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(WebhookEndpoint, failed_recently, last_error)
        .where(WebhookEndpoint.organization_id == org_id, WebhookEndpoint.deleted_at.is_(None))
        .order_by(WebhookEndpoint.id)
    )
    return [
        FailingEndpoint(
            id=e.id,
            url=e.url,
            enabled=e.enabled,
            disabled_reason=e.disabled_reason,
            failing_since=e.failing_since,
            failed_deliveries_24h=failed or 0,
            last_error=error,
        )
        for e, failed, error in rows.all()
        if not e.enabled or e.failing_since is not None or failed
    ]
