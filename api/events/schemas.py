"""Event shapes. Items are validated one by one, so one bad event never sinks its batch."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from api.schemas import Struct

MAX_BATCH_EVENTS = 5_000
MAX_EVENT_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 5 * 1024 * 1024

EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Identity = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class EventIn(Struct):
    """One product-analytics event (Segment/PostHog style)."""

    event: EventName
    user_id: Identity | None = None
    anonymous_id: Identity | None = None
    message_id: MessageId | None = None
    timestamp: AwareDatetime | None = None
    sent_at: AwareDatetime | None = None
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Required with a platform ingest key; with an org key it may only name the key's own org.
    org_id: uuid.UUID | None = None


class BatchIn(Struct):
    """The envelope; items stay raw until each is checked on its own."""

    events: list[msgspec.Raw]
    sent_at: AwareDatetime | None = None


class Rejection(msgspec.Struct):
    index: int
    message_id: str | None
    error: str


class IngestResult(msgspec.Struct):
    accepted: int
    duplicates: int
    rejected: list[Rejection]


class EventDoc(Struct):
    """The documented shape of a batch (the handler reads the raw body itself, for its limits)."""

    events: Annotated[list[EventIn], msgspec.Meta(max_length=MAX_BATCH_EVENTS)]
    sent_at: AwareDatetime | None = None
