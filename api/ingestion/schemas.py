from __future__ import annotations

import uuid
from datetime import date, datetime

import msgspec


class IngestionWarningOut(msgspec.Struct):
    id: uuid.UUID
    #: null: the message named no organization that exists (staff's list only).
    organization_id: uuid.UUID | None
    #: The key that sent the messages.
    token_id: uuid.UUID
    #: invalid_field, oversized, timestamp_out_of_range, unknown_org, suspended_org, foreign_org.
    reason: str
    #: The UTC day the messages were received; one row per org, key, reason and day.
    day: date
    count: int
    first_seen_at: datetime
    last_seen_at: datetime
    #: The latest such message's id, the reason in words, and its first 2,000 characters.
    message_id: str | None
    error: str
    sample: str


class IngestionWarningPage(msgspec.Struct):
    items: list[IngestionWarningOut]
    next_cursor: str | None
