"""Segment's Tracking API messages, as its SDKs send them (camelCase; unknown fields ignored, as
Segment ignores them: SDKs add ``writeKey``, ``_metadata``, ``channel``, ``version``...)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

MessageType = Literal["track", "identify", "group", "page", "screen", "alias"]
MESSAGE_TYPES: tuple[str, ...] = ("track", "identify", "group", "page", "screen", "alias")
#: How each call is stored as a Keel event (``track`` keeps its own event name).
RESERVED_EVENTS = {
    "identify": "$identify",
    "group": "$group",
    "page": "$page",
    "screen": "$screen",
    "alias": "$alias",
}
#: Segment's ids may be numbers; Keel stores them as text. The limits are Keel's columns'.
SegmentId = str | int
Identity = Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | int
MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class SegmentMessage(msgspec.Struct, rename="camel", gc=False):
    """One call of any type (``type`` says which; the single-call routes imply it).

    Decoded with Keel's limits, then normalized in place into the fields of an ``EventIn``
    (``api.segment.services.CallReader``), so the ingest path's rules read it as they read Keel's
    own events, without a second object per call."""

    type: MessageType | None = None
    user_id: Identity | None = None
    anonymous_id: Identity | None = None
    message_id: MessageId | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    event: EventName | None = None
    name: str | None = None
    category: str | None = None
    group_id: SegmentId | None = None
    previous_id: SegmentId | None = None
    integrations: dict[str, Any] | None = None
    #: Not on the wire (whatever a client sends there is overwritten): the resolved organization.
    org_id: uuid.UUID | None = msgspec.field(default=None, name="$keelOrgId")


class SegmentRefContext(msgspec.Struct, rename="camel", gc=False):
    group_id: Any = None


class SegmentRef(msgspec.Struct, rename="camel", gc=False):
    """What of a call names its organization, read before the calls are (``services.find_refs``):
    anything else, and whether the call is valid, is the full decode's to judge."""

    type: Any = None
    group_id: Any = None
    context: SegmentRefContext | None = None


class SegmentBatch(msgspec.Struct, rename="camel"):
    """``POST /segment/v1/batch``: the calls stay raw until each is judged alone. A batch's
    ``context`` and ``integrations`` apply to every call (a call's own keys win)."""

    batch: list[msgspec.Raw]
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class SegmentMessageDoc(msgspec.Struct, rename="camel"):
    """The documented shape of one call (the handlers read the raw body themselves)."""

    type: MessageType | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    group_id: str | None = None
    previous_id: str | None = None
    integrations: dict[str, Any] | None = None


class SegmentBatchDoc(msgspec.Struct, rename="camel"):
    batch: list[SegmentMessageDoc]
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class ClientMetrics(msgspec.Struct):
    """``POST /segment/v1/m``: analytics.js's own telemetry (``{"series": [...]}``), read only to be
    answered: each item stays raw and is discarded."""

    series: list[msgspec.Raw]


class ClientMetricDoc(msgspec.Struct):
    """The documented shape of one of analytics.js's metrics (never stored)."""

    type: str
    metric: str
    value: float
    tags: dict[str, str] | None = None


class ClientMetricsDoc(msgspec.Struct):
    series: list[ClientMetricDoc]


class SegmentAnswer(msgspec.Struct):
    """What Segment answers a well-formed request (its SDKs treat anything else as a failure)."""

    success: bool = True
