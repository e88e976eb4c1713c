"""Staff webhook tools and the inbound Stripe route."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import StaffPermission
from api.deps import PUBLIC, provide_context
from api.errors import KeelError
from api.events.body import read_limited_body
from api.pagination import Cursor, Limit, page_of
from api.webhooks import deliveries, inbound
from api.webhooks.controllers import DELIVERY_FILTERS, TypeFilter, delivery_detail_out, delivery_out, utc
from api.webhooks.deliveries import DeliveryFilters
from api.webhooks.models import InboundEvent, InboundOutcome, InboundStatus
from api.webhooks.schemas import (
    DeliveryDetail,
    DeliveryOut,
    DeliveryPage,
    InboundAck,
    InboundEventDetail,
    InboundEventOut,
    InboundEventPage,
    InboundRequestOut,
    InboundRequestPage,
)


def request_out(r: Any) -> InboundRequestOut:
    return InboundRequestOut(
        id=r.id, source=r.source, received_at=r.received_at, outcome=r.outcome,
        inbound_event_id=r.inbound_event_id, external_id=r.external_id, error=r.error,
        body_sha256=r.body_sha256, body_bytes=r.body_bytes,
    )  # fmt: skip


class StripeEventDoc(msgspec.Struct):
    """A Stripe event as Stripe sends it (the route verifies the raw body's signature first)."""

    id: str
    object: str
    type: str
    created: int
    livemode: bool
    data: dict[str, Any]
    api_version: str | None = None


def inbound_out(e: InboundEvent) -> InboundEventOut:
    return InboundEventOut(
        id=e.id, source=e.source, external_id=e.external_id, event_type=e.event_type, livemode=e.livemode,
        event_created_at=e.event_created_at, status=e.status, attempts=e.attempts, last_error=e.last_error,
        duplicates=e.duplicates, received_at=e.received_at, processed_at=e.processed_at,
    )  # fmt: skip


def inbound_detail(e: InboundEvent) -> InboundEventDetail:
    out = inbound_out(e)
    return InboundEventDetail(**{f: getattr(out, f) for f in out.__struct_fields__}, payload=e.payload)


class StripeWebhookController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks in"]

    @post(
        "/stripe",
        status_code=HTTP_200_OK,
        opt={**PUBLIC, "request_body": StripeEventDoc},
        summary="Stripe's webhook endpoint (authenticated by the Stripe-Signature header)",
        description=f"Verified with the `stripe` SDK ({inbound.TOLERANCE} s tolerance). Each event is stored "
        "once by its id; a replay answers 200 and is counted. Every refusal is recorded "
        "(`GET /v1/admin/inbound-requests`): a bad or missing signature, a timestamp more than "
        f"{inbound.TOLERANCE} s in the past or the future, a body that is not a Stripe event (NaN, 1e400, "
        f"…) are 400; a body over {inbound.MAX_BODY // 1024} KB is 413.",
    )
    async def stripe_webhook(
        self,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        state: State,
        stripe_signature: Annotated[
            str | None,
            Parameter(header="stripe-signature", default=None, description="`t=<unix time>,v1=<hex HMAC>`"),
        ],
    ) -> InboundAck:
        ctx = provide_context(request)
        body = b""
        try:
            body = await read_limited_body(request, inbound.MAX_BODY)
            event = inbound.verify(body, stripe_signature, state.settings.stripe_webhook_secret)
        except KeelError as exc:
            await inbound.reject(state.sessionmaker, body=body, ctx=ctx, error=exc.detail)
            raise
        received = await inbound.receive_stripe(db, event=event, body=body, ctx=ctx)
        return InboundAck(
            received=True, duplicate=received.duplicate, id=received.event.id, status=received.event.status
        )


class AdminWebhookController(Controller):
    path = "/v1/admin"
    tags = ["admin"]

    @get(
        "/inbound-events",
        summary="Inbound provider events, newest first (staff)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def list_inbound(
        self,
        db: AsyncSession,
        principal: Principal,
        cursor: Cursor,
        limit: Limit,
        status: Annotated[InboundStatus | None, Parameter(default=None)],
        event_type: TypeFilter,
        since: Annotated[datetime | None, Parameter(default=None)],
    ) -> InboundEventPage:
        rows = await inbound.list_events(
            db, cursor=cursor, limit=limit, status=status, event_type=event_type,
            since=utc(since) if since else None,
        )  # fmt: skip
        return page_of(InboundEventPage, rows, limit, inbound_out)

    @get(
        "/inbound-events/{event_id:uuid}",
        summary="One inbound event with its payload (staff)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def read_inbound(
        self, event_id: uuid.UUID, db: AsyncSession, principal: Principal
    ) -> InboundEventDetail:
        return inbound_detail(await inbound.get_event(db, event_id))

    @post(
        "/inbound-events/{event_id:uuid}/reprocess",
        status_code=HTTP_200_OK,
        summary="Process an inbound event again (support, admin)",
        opt=auth.staff_only(StaffPermission.operate),
    )
    async def reprocess(
        self, event_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> InboundEventDetail:
        event = await inbound.reprocess(
            db, event_id=event_id, actor=Actor.of(principal, as_staff=True), ctx=ctx
        )
        return inbound_detail(event)

    @get(
        "/inbound-requests",
        summary="Every request to the inbound webhook routes, rejected ones too (staff)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def list_requests(
        self,
        db: AsyncSession,
        principal: Principal,
        cursor: Cursor,
        limit: Limit,
        outcome: Annotated[InboundOutcome | None, Parameter(default=None)],
    ) -> InboundRequestPage:
        rows = await inbound.list_requests(db, cursor=cursor, limit=limit, outcome=outcome)
        return page_of(InboundRequestPage, rows, limit, request_out)

    @get(
        "/webhook-deliveries",
        summary="Every organization's webhook deliveries, newest first (staff; the read is audited)",
        description="Filters as on an organization's list (`status`, `endpoint_id`, `event_type`, `since`, "
        "`until`), plus `org_id`; cursor pagination. Each organization whose deliveries a page shows "
        "records `staff.webhook_deliveries_viewed` in its own audit log.",
        dependencies=DELIVERY_FILTERS,
        opt=auth.staff_only(StaffPermission.read),
    )
    async def list_deliveries(
        self,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        cursor: Cursor,
        limit: Limit,
        filters: DeliveryFilters,
        org_id: Annotated[uuid.UUID | None, Parameter(default=None, description="One organization only.")],
    ) -> DeliveryPage:
        rows = await deliveries.staff_list_deliveries(
            db, org_id=org_id, filters=filters, cursor=cursor, limit=limit,
            actor=Actor.of(principal, as_staff=True), ctx=ctx,
        )  # fmt: skip
        return page_of(DeliveryPage, rows, limit, delivery_out)

    @get(
        "/webhook-deliveries/{delivery_id:uuid}",
        summary="One delivery of any organization, its payload and every attempt (staff; audited)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def read_delivery(
        self, delivery_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> DeliveryDetail:
        return delivery_detail_out(
            *await deliveries.staff_delivery_detail(
                db, delivery_id=delivery_id, actor=Actor.of(principal, as_staff=True), ctx=ctx
            )
        )

    @post(
        "/webhook-deliveries/{delivery_id:uuid}/retry",
        status_code=HTTP_200_OK,
        summary="Attempt a customer's delivery again now (support, admin)",
        opt=auth.staff_only(StaffPermission.operate),
    )
    async def retry_delivery(
        self, delivery_id: uuid.UUID, db: AsyncSession, principal: Principal, ctx: RequestContext
    ) -> DeliveryOut:
        d = await deliveries.retry_delivery(
            db, delivery_id=delivery_id, org_id=None, actor=Actor.of(principal, as_staff=True), ctx=ctx
        )
        return delivery_out(d)
