"""Webhook request and response shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from api.schemas import Struct
from api.webhooks.models import DeliveryStatus, InboundOutcome, InboundStatus

EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
FILTER_PATTERN = r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$"

EventType = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=200, pattern=EVENT_TYPE_PATTERN,
        description="Dot-separated words: letters, digits, `_` and `-`.", examples=["invoice.paid"],
    ),
]  # fmt: skip
EventTypeFilter = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=200, pattern=FILTER_PATTERN,
        description="An event type, a prefix ending in `.*` (`member.*`), or `*` for all.",
        examples=["member.*"],
    ),
]  # fmt: skip
EndpointUrl = Annotated[
    str, msgspec.Meta(min_length=1, max_length=2048, examples=["https://hooks.example.com/keel"])
]
Description = Annotated[str, msgspec.Meta(max_length=500)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
MessageKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
EventTypes = Annotated[list[EventTypeFilter], msgspec.Meta(max_length=100)]


class EndpointCreate(Struct):
    url: EndpointUrl
    description: Description = ""
    #: Empty: every event type.
    event_types: EventTypes = msgspec.field(default_factory=list)
    enabled: bool = True


class EndpointUpdate(Struct):
    url: EndpointUrl | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    event_types: EventTypes | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    #: Why it is being disabled (with ``enabled: false``).
    disabled_reason: Reason | msgspec.UnsetType | None = msgspec.UNSET


class EndpointOut(msgspec.Struct):
    id: uuid.UUID
    organization_id: uuid.UUID
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointCreated(EndpointOut):
    #: Shown here once; `GET .../secret` shows it again to owners and admins.
    secret: str


class EndpointPage(msgspec.Struct):
    items: list[EndpointOut]
    next_cursor: str | None


class SecretOut(msgspec.Struct):
    secret: str
    #: While a rotation is recent, the old secret still signs beside the new one until this time.
    previous_secret: str | None
    previous_secret_expires_at: datetime | None


class RecoverOut(msgspec.Struct):
    requeued: int


class EndpointStats(msgspec.Struct):
    window_start: datetime
    window_end: datetime
    attempts: int
    succeeded: int
    failed: int
    success_rate: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    deliveries: dict[str, int]


class MessageIn(Struct):
    event_type: EventType
    payload: dict[str, Any]
    #: Idempotency key: the same one twice in an organization is one message.
    message_id: MessageKey | None = None


class MessageOut(msgspec.Struct):
    id: uuid.UUID
    message_id: str
    event_type: str
    created_at: datetime
    #: True when the message_id had been published before: nothing new was sent.
    duplicate: bool
    deliveries: int


class AttemptOut(msgspec.Struct):
    id: uuid.UUID
    attempt_number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    response_headers: dict[str, Any] | None
    response_body: str | None
    error_class: str | None
    error_detail: str | None


class DeliveryOut(msgspec.Struct):
    id: uuid.UUID
    organization_id: uuid.UUID
    endpoint_id: uuid.UUID
    message_id: uuid.UUID
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    succeeded_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any]
    attempt_log: list[AttemptOut]


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None


class InboundEventOut(msgspec.Struct):
    id: uuid.UUID
    source: str
    external_id: str
    event_type: str
    livemode: bool
    event_created_at: datetime | None
    status: InboundStatus
    attempts: int
    last_error: str | None
    duplicates: int
    received_at: datetime
    processed_at: datetime | None


class InboundEventDetail(InboundEventOut):
    payload: dict[str, Any]


class InboundEventPage(msgspec.Struct):
    items: list[InboundEventOut]
    next_cursor: str | None


class InboundRequestOut(msgspec.Struct):
    id: uuid.UUID
    source: str
    received_at: datetime
    outcome: InboundOutcome
    inbound_event_id: uuid.UUID | None
    external_id: str | None
    error: str | None
    body_sha256: str
    body_bytes: int


class InboundRequestPage(msgspec.Struct):
    items: list[InboundRequestOut]
    next_cursor: str | None


class InboundAck(msgspec.Struct):
    received: bool
    duplicate: bool
    id: uuid.UUID
    status: InboundStatus


class FailingEndpoint(msgspec.Struct):
    id: uuid.UUID
    organization_id: uuid.UUID
    url: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    failed_deliveries_24h: int
    last_error: str | None
    #: The newest failed or exhausted deliveries to this endpoint (up to 5), newest first: open one at
    #: `GET /v1/admin/webhook-deliveries/{id}`, send it again with `POST …/{id}/retry`.
    latest_failed_delivery_ids: list[uuid.UUID]
