"""Audit stream request and response shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from api.audit.streams.models import StreamFormat, StreamStatus, StreamType
from api.schemas import Name, Struct

StreamUrl = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2048,
        description="https (Splunk HEC and Datadog: the collector's base URL; s3: `https://host/bucket[/prefix][?region=r]`).",
        examples=["https://http-inputs-acme.splunkcloud.com"],
    ),
]
Token = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=4096,
        pattern=r"^[\x21-\x7e]+$",
        description="The destination's credential: HEC token, Datadog API key, S3 `ACCESS_KEY_ID:SECRET`; "
        "optional for https (sent as a bearer token). Stored encrypted, never shown again.",
    ),
]


class StreamCreate(Struct):
    name: Name
    type: StreamType
    url: StreamUrl
    token: Token | None = None
    format: StreamFormat = StreamFormat.keel


class StreamUpdate(Struct):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    url: StreamUrl | msgspec.UnsetType = msgspec.UNSET
    token: Token | msgspec.UnsetType = msgspec.UNSET
    format: StreamFormat | msgspec.UnsetType = msgspec.UNSET


class StreamOut(msgspec.Struct):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    type: StreamType
    url: str
    format: StreamFormat
    status: StreamStatus
    has_token: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    #: Every entry up to this seq is delivered.
    delivered_seq: int
    #: Every signed checkpoint of the chain up to this seq is delivered.
    delivered_checkpoint_seq: int
    #: Entries recorded and not yet delivered, and how long the oldest of them has waited.
    lag_entries: int
    lag_seconds: float
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    failing_since: datetime | None
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime


class StreamCreated(StreamOut):
    #: An https stream's Standard Webhooks signing secret, shown this once (null for other types).
    secret: str | None = None


class StreamPage(msgspec.Struct):
    items: list[StreamOut]
    next_cursor: str | None


class StreamTestOut(msgspec.Struct):
    ok: bool
    status_code: int | None
    error: str | None
