"""Reading deliveries and their attempts, and sending one again by hand."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, text, true
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.db.base import utcnow
from api.errors import Conflict, NotFound
from api.orgs.models import Organization
from api.pagination import decode_cursor
from api.schemas import utc_bound
from api.webhooks.messages import NOTIFY_CHANNEL
from api.webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)
from api.webhooks.schemas import FailingEndpoint

RESOURCE = "webhook_delivery"
#: Deliveries whose last attempt failed: waiting for a retry (or parked), or out of attempts.
FAILED = (DeliveryStatus.failed, DeliveryStatus.exhausted)
#: How many of an endpoint's latest failed deliveries the admin org view names.
LATEST_FAILED = 5


@dataclass(frozen=True, slots=True)
class DeliveryFilters:
    """The filters of a delivery list, one definition for the organization's and staff's lists.

    ``event_type`` is exact, or a prefix when it ends in ``.*`` (``*`` alone: every type); ``since``
    and ``until`` bound ``created_at`` (at or after, before). A time without an offset is UTC.
    """

    status: DeliveryStatus | None = None
    endpoint_id: uuid.UUID | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
                object.__setattr__(self, name, utc_bound(aware))

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.status is not None:
            query = query.where(WebhookDelivery.status == self.status)
        if self.endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == self.endpoint_id)
        if self.event_type is not None:
            if self.event_type.endswith(".*"):
                query = query.where(
                    WebhookDelivery.event_type.startswith(self.event_type[:-1], autoescape=True)
                )
            elif self.event_type != "*":
                query = query.where(WebhookDelivery.event_type == self.event_type)
        if self.since is not None:
            query = query.where(WebhookDelivery.created_at >= self.since)
        if self.until is not None:
            query = query.where(WebhookDelivery.created_at < self.until)
        return query

    def described(self) -> dict[str, str]:
        """The filters that are set, as text (what a staff read's audit entry records)."""
        return {
            k: (v.isoformat() if isinstance(v, datetime) else str(v))
            for k, v in asdict(self).items()
            if v is not None
        }


async def list_deliveries(
    session: AsyncSession,
    *,
    org_id: uuid.UUID | None,
    filters: DeliveryFilters,
    cursor: str | None,
    limit: int,
) -> list[WebhookDelivery]:
    """Newest first (UUIDv7 ids: creation order), ``limit + 1`` rows; every organization's when
    ``org_id`` is ``None`` (staff)."""
    after = decode_cursor(cursor)
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit + 1)
    if org_id is not None:
        query = query.where(WebhookDelivery.organization_id == org_id)
    if after is not None:
        query = query.where(WebhookDelivery.id < after)
    return list((await session.scalars(filters.apply(query))).all())


async def staff_list_deliveries(
    session: AsyncSession,
    *,
    org_id: uuid.UUID | None,
    filters: DeliveryFilters,
    cursor: str | None,
    limit: int,
    actor: Actor,
    ctx: RequestContext,
) -> list[WebhookDelivery]:
    """Staff's list across organizations, itself audited as the other staff reads are.

    Each organization whose deliveries are shown gets a ``staff.webhook_deliveries_viewed`` entry in
    its own chain; a page that shows none is recorded in the named organization's chain, or the
    platform chain.
    """
    if org_id is not None and await session.get(Organization, org_id) is None:
        raise NotFound("organization not found")
    rows = await list_deliveries(session, org_id=org_id, filters=filters, cursor=cursor, limit=limit)
    page = rows[:limit]
    shown = {d.organization_id for d in page}
    if org_id is not None:
        shown.add(org_id)
    viewed: list[uuid.UUID | None] = [*sorted(shown)] if shown else [None]  # sorted: one lock order
    described = {**filters.described(), **({"org_id": str(org_id)} if org_id else {})}
    for viewed_org in viewed:
        await audit.record(
            session, action="staff.webhook_deliveries_viewed", actor=actor, ctx=ctx,
            organization_id=viewed_org, resource_type=RESOURCE, resource_id=viewed_org or "all",
            metadata={
                "filters": described,
                "deliveries_shown": sum(1 for d in page if d.organization_id == viewed_org),
            },
        )  # fmt: skip
    return rows


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
    session: AsyncSession, *, delivery_id: uuid.UUID, org_id: uuid.UUID | None
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


async def staff_delivery_detail(
    session: AsyncSession, *, delivery_id: uuid.UUID, actor: Actor, ctx: RequestContext
) -> tuple[WebhookDelivery, WebhookMessage, list[WebhookAttempt]]:
    """One delivery of any organization, for staff; the read is recorded in that organization's log."""
    found = await delivery_detail(session, delivery_id=delivery_id, org_id=None)
    await audit.record(
        session, action="staff.webhook_deliveries_viewed", actor=actor, ctx=ctx,
        organization_id=found[0].organization_id, resource_type=RESOURCE, resource_id=delivery_id,
        metadata={"filters": {"delivery_id": str(delivery_id)}, "deliveries_shown": 1},
    )  # fmt: skip
    return found


async def retry_delivery(
    session: AsyncSession,
    *,
    delivery_id: uuid.UUID,
    org_id: uuid.UUID | None,
    actor: Actor,
    ctx: RequestContext,
    reason: str | None = None,
) -> WebhookDelivery:
    """One more attempt, now; if it fails the schedule resumes where it was (or it is exhausted).
    ``reason`` (the console asks staff for one) is kept in the audit entry's metadata."""
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
        metadata={"reason": reason} if reason else None,
    )  # fmt: skip
    return delivery


async def failing_endpoints(session: AsyncSession, *, org_id: uuid.UUID | None) -> list[FailingEndpoint]:
    """Endpoints that are disabled, in a run of failures, or had failed deliveries in the last day,
    each with the ids of its latest failed deliveries (newest first) to open or retry; of one
    organization, or of every one (``org_id=None``: the console's health page)."""
    since = utcnow() - timedelta(hours=24)
    failed_recently = (
        select(func.count())
        .where(
            WebhookDelivery.endpoint_id == WebhookEndpoint.id,
            WebhookDelivery.created_at >= since,
            WebhookDelivery.status.in_(FAILED),
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
    query = select(WebhookEndpoint, failed_recently, last_error).where(WebhookEndpoint.deleted_at.is_(None))
    if org_id is not None:
        query = query.where(WebhookEndpoint.organization_id == org_id)
    else:
        # Across organizations, only endpoints with something to show are read at all.
        query = query.where(
            or_(
                WebhookEndpoint.enabled.is_(False),
                WebhookEndpoint.failing_since.is_not(None),
                failed_recently > 0,
            )
        )
    rows = await session.execute(query.order_by(WebhookEndpoint.id))
    failing = [
        (e, failed, error)
        for e, failed, error in rows.all()
        if not e.enabled or e.failing_since is not None or failed
    ]
    latest = await _latest_failed(session, [e.id for e, _, _ in failing])
    return [
        FailingEndpoint(
            id=e.id,
            organization_id=e.organization_id,
            url=e.url,
            enabled=e.enabled,
            disabled_reason=e.disabled_reason,
            failing_since=e.failing_since,
            failed_deliveries_24h=failed or 0,
            last_error=error,
            latest_failed_delivery_ids=latest.get(e.id, []),
        )
        for e, failed, error in failing
    ]


async def _latest_failed(
    session: AsyncSession, endpoint_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Each endpoint's newest failed or exhausted deliveries (at most ``LATEST_FAILED``), newest first."""
    if not endpoint_ids:
        return {}
    newest = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.endpoint_id == WebhookEndpoint.id, WebhookDelivery.status.in_(FAILED))
        .order_by(WebhookDelivery.id.desc())
        .limit(LATEST_FAILED)
        .correlate(WebhookEndpoint)
        .lateral()
    )
    rows = await session.execute(
        select(WebhookEndpoint.id, newest.c.id)
        .join(newest, true())
        .where(WebhookEndpoint.id.in_(endpoint_ids))
        .order_by(WebhookEndpoint.id, newest.c.id.desc())
    )
    found: dict[uuid.UUID, list[uuid.UUID]] = {}
    for endpoint_id, delivery_id in rows.all():
        found.setdefault(endpoint_id, []).append(delivery_id)
    return found
