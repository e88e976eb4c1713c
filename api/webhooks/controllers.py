"""Organization webhook routes: endpoints, messages, deliveries (owner and admin; messages also by
the organization's own ingest key)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import Permission
from api.auth.services import ALLOW_ORG_KEY
from api.pagination import Cursor, Limit, page_of
from api.tokens.models import TokenKind
from api.webhooks import deliveries, endpoints
from api.webhooks.deliveries import DeliveryFilters
from api.webhooks.messages import publish
from api.webhooks.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)
from api.webhooks.schemas import (
    AttemptOut,
    DeliveryDetail,
    DeliveryOut,
    DeliveryPage,
    EndpointCreate,
    EndpointCreated,
    EndpointOut,
    EndpointPage,
    EndpointStats,
    EndpointUpdate,
    MessageIn,
    MessageOut,
    RecoverOut,
    SecretOut,
)

TypeFilter = Annotated[
    str | None,
    Parameter(
        default=None, max_length=200, description="An event type, or a prefix ending in `.*` (`member.*`)."
    ),
]
Since = Annotated[
    datetime | None, Parameter(default=None, description="Only deliveries created at or after this time.")
]
Until = Annotated[
    datetime | None, Parameter(default=None, description="Only deliveries created before this time.")
]


def provide_delivery_filters(
    status: Annotated[DeliveryStatus | None, Parameter(default=None)],
    endpoint_id: Annotated[uuid.UUID | None, Parameter(default=None)],
    event_type: TypeFilter,
    since: Since,
    until: Until,
) -> DeliveryFilters:
    """The query parameters of every delivery list (an organization's, and staff's)."""
    return DeliveryFilters(
        status=status, endpoint_id=endpoint_id, event_type=event_type, since=since, until=until
    )


DELIVERY_FILTERS = {"filters": Provide(provide_delivery_filters, sync_to_thread=False)}


def utc(value: datetime) -> datetime:
    """A time without an offset is taken as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def endpoint_out(e: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(
        id=e.id, organization_id=e.organization_id, url=e.url, description=e.description,
        event_types=list(e.event_types), enabled=e.enabled, disabled_reason=e.disabled_reason,
        disabled_at=e.disabled_at, failing_since=e.failing_since, created_at=e.created_at,
        updated_at=e.updated_at,
    )  # fmt: skip


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id, organization_id=d.organization_id, endpoint_id=d.endpoint_id,
        message_id=d.webhook_message_id, event_type=d.event_type, status=d.status, attempts=d.attempts,
        next_attempt_at=d.next_attempt_at, last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code, last_error=d.last_error, succeeded_at=d.succeeded_at,
        created_at=d.created_at, updated_at=d.updated_at,
    )  # fmt: skip


def attempt_out(a: WebhookAttempt) -> AttemptOut:
    return AttemptOut(
        id=a.id, attempt_number=a.attempt_number, started_at=a.started_at, duration_ms=a.duration_ms,
        status_code=a.status_code, response_headers=a.response_headers, response_body=a.response_body,
        error_class=a.error_class, error_detail=a.error_detail,
    )  # fmt: skip


def delivery_detail_out(
    d: WebhookDelivery, message: WebhookMessage, attempts: list[WebhookAttempt]
) -> DeliveryDetail:
    out = delivery_out(d)
    return DeliveryDetail(
        **{f: getattr(out, f) for f in out.__struct_fields__},
        payload=message.payload, attempt_log=[attempt_out(a) for a in attempts],
    )  # fmt: skip


def secret_out(secrets: tuple[str, str | None, datetime | None]) -> SecretOut:
    return SecretOut(secret=secrets[0], previous_secret=secrets[1], previous_secret_expires_at=secrets[2])


class WebhookEndpointController(Controller):
    path = "/v1/orgs/{org_id:uuid}/webhook-endpoints"
    tags = ["webhooks"]

    @get("/", summary="List the organization's webhook endpoints (owner, admin)")
    async def list_endpoints(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, cursor: Cursor, limit: Limit
    ) -> EndpointPage:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        rows = await endpoints.list_endpoints(db, org_id=org_id, cursor=cursor, limit=limit)
        return page_of(EndpointPage, rows, limit, endpoint_out)

    @post("/", summary="Add an endpoint (https, public address); the answer carries its secret once")
    async def create(
        self,
        org_id: uuid.UUID,
        data: EndpointCreate,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        state: State,
    ) -> EndpointCreated:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        e = await endpoints.create_endpoint(
            db, org_id=org_id, data=data, allow_private=state.settings.webhook_allow_private_targets,
            actor=Actor.of(principal), ctx=ctx,
        )  # fmt: skip
        out = endpoint_out(e)
        return EndpointCreated(**{f: getattr(out, f) for f in out.__struct_fields__}, secret=e.secret)

    @get("/{endpoint_id:uuid}", summary="Get an endpoint")
    async def read(
        self, org_id: uuid.UUID, endpoint_id: uuid.UUID, db: AsyncSession, principal: Principal
    ) -> EndpointOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        return endpoint_out(await endpoints.get_endpoint(db, org_id=org_id, endpoint_id=endpoint_id))

    @patch("/{endpoint_id:uuid}", summary="Change an endpoint; `enabled: false` with a reason disables it")
    async def update(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        data: EndpointUpdate,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
        state: State,
    ) -> EndpointOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        e = await endpoints.update_endpoint(
            db, org_id=org_id, endpoint_id=endpoint_id, data=data,
            allow_private=state.settings.webhook_allow_private_targets, actor=Actor.of(principal), ctx=ctx,
        )  # fmt: skip
        return endpoint_out(e)

    @delete("/{endpoint_id:uuid}", status_code=HTTP_204_NO_CONTENT, summary="Delete an endpoint")
    async def remove(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> None:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        await endpoints.delete_endpoint(
            db, org_id=org_id, endpoint_id=endpoint_id, actor=Actor.of(principal), ctx=ctx
        )

    @get("/{endpoint_id:uuid}/secret", summary="The endpoint's signing secret (the read is audited)")
    async def secret(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> SecretOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        return secret_out(
            await endpoints.read_secret(
                db, org_id=org_id, endpoint_id=endpoint_id, actor=Actor.of(principal), ctx=ctx
            )
        )

    @post(
        "/{endpoint_id:uuid}/rotate-secret",
        status_code=HTTP_200_OK,
        summary="Rotate the secret; the old one keeps signing beside the new one for 24 hours",
    )
    async def rotate_secret(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> SecretOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        return secret_out(
            await endpoints.rotate_secret(
                db, org_id=org_id, endpoint_id=endpoint_id, actor=Actor.of(principal), ctx=ctx
            )
        )

    @post(
        "/{endpoint_id:uuid}/recover",
        status_code=HTTP_200_OK,
        summary="Send again every delivery to this endpoint that failed since `since`",
    )
    async def recover(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        since: Annotated[datetime, Parameter(description="Deliveries created at or after this time.")],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> RecoverOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        requeued = await endpoints.recover(
            db, org_id=org_id, endpoint_id=endpoint_id, since=utc(since), actor=Actor.of(principal), ctx=ctx
        )
        return RecoverOut(requeued=requeued)

    @get("/{endpoint_id:uuid}/stats", summary="The last 24 hours: success rate, latency, deliveries")
    async def stats(
        self, org_id: uuid.UUID, endpoint_id: uuid.UUID, db: AsyncSession, principal: Principal
    ) -> EndpointStats:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        return await endpoints.stats(db, org_id=org_id, endpoint_id=endpoint_id)


class WebhookMessageController(Controller):
    path = "/v1/orgs/{org_id:uuid}/webhook-messages"
    tags = ["webhooks"]

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        opt={ALLOW_ORG_KEY: True},
        summary="Publish a message to every matching endpoint (owner, admin, or the org's ingest key)",
        description="Idempotent on `message_id`: publishing one again answers the first message "
        "(`duplicate: true`) and sends nothing new.",
    )
    async def publish(
        self, org_id: uuid.UUID, data: MessageIn, db: AsyncSession, principal: Principal
    ) -> MessageOut:
        if principal.kind is not TokenKind.org_ingest:  # the tenant guard already matched the key's org
            await auth.org_access(db, principal, org_id, Permission.manage_org)
        published = await publish(
            db, organization_id=org_id, event_type=data.event_type, payload=data.payload,
            message_id=data.message_id,
        )  # fmt: skip
        return MessageOut(
            id=published.id, message_id=published.message_id, event_type=published.event_type,
            created_at=published.created_at, duplicate=published.duplicate, deliveries=published.deliveries,
        )  # fmt: skip


class WebhookDeliveryController(Controller):
    path = "/v1/orgs/{org_id:uuid}/webhook-deliveries"
    tags = ["webhooks"]

    @get(
        "/",
        summary="List deliveries, newest first (filters: status, endpoint, event type, since, until)",
        dependencies=DELIVERY_FILTERS,
    )
    async def list_deliveries(
        self,
        org_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        cursor: Cursor,
        limit: Limit,
        filters: DeliveryFilters,
    ) -> DeliveryPage:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        rows = await deliveries.list_deliveries(
            db, org_id=org_id, filters=filters, cursor=cursor, limit=limit
        )
        return page_of(DeliveryPage, rows, limit, delivery_out)

    @get("/{delivery_id:uuid}", summary="One delivery, its payload and every attempt")
    async def read(
        self, org_id: uuid.UUID, delivery_id: uuid.UUID, db: AsyncSession, principal: Principal
    ) -> DeliveryDetail:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        return delivery_detail_out(
            *await deliveries.delivery_detail(db, delivery_id=delivery_id, org_id=org_id)
        )

    @post("/{delivery_id:uuid}/retry", status_code=HTTP_200_OK, summary="Attempt this delivery again now")
    async def retry(
        self,
        org_id: uuid.UUID,
        delivery_id: uuid.UUID,
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> DeliveryOut:
        await auth.org_access(db, principal, org_id, Permission.manage_org)
        d = await deliveries.retry_delivery(
            db, delivery_id=delivery_id, org_id=org_id, actor=Actor.of(principal), ctx=ctx
        )
        return delivery_out(d)
