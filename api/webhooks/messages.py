"""Publishing: a message is stored once per (organization, message_id) and fanned out, in the
caller's transaction, as one delivery per matching enabled endpoint.

Keel's own services publish through :func:`publish` in the same transaction as the change they
announce, so a rolled-back change never sends a webhook and a committed one always does.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from api.db.base import new_id, utcnow
from api.errors import ValidationFailed
from api.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookMessage
from api.webhooks.schemas import EVENT_TYPE_PATTERN, FILTER_PATTERN

#: Workers LISTEN here; a publish that created deliveries NOTIFYs at commit, so they wake at once.
NOTIFY_CHANNEL = "keel_webhook_due"
_EVENT_TYPE = re.compile(EVENT_TYPE_PATTERN.rstrip("$"))
_FILTER = re.compile(FILTER_PATTERN.rstrip("$"))
_encode = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Published:
    id: uuid.UUID
    message_id: str
    event_type: str
    created_at: datetime
    duplicate: bool
    deliveries: int


def check_event_type(value: str, field: str = "event_type") -> str:
    if _EVENT_TYPE.fullmatch(value) is None or len(value) > 200:
        raise ValidationFailed(f"{field}: {value!r} is not an event type (dot-separated words)", field=field)
    return value


def check_filters(values: list[str], field: str = "event_types") -> list[str]:
    for index, value in enumerate(values):
        if _FILTER.fullmatch(value) is None:
            raise ValidationFailed(
                f"{field}[{index}]: {value!r} is not an event type, a `prefix.*` or `*`",
                field=f"{field}[{index}]",
            )
    return list(dict.fromkeys(values))


def matches(filters: list[str], event_type: str) -> bool:
    """An endpoint with no filter takes every type; ``member.*`` takes ``member.added`` and deeper."""
    if not filters:
        return True
    for pattern in filters:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def check_payload(payload: dict[str, Any], field: str = "payload") -> None:
    """What JSONB cannot store is a 422 here, not a database error later."""
    try:
        encoded = _encode.encode(payload)
        encoded.decode()
    except (TypeError, UnicodeError, OverflowError) as exc:
        raise ValidationFailed(f"{field}: cannot be stored ({exc})", field=field) from None
    if b"\\u0000" in encoded:
        raise ValidationFailed(f"{field}: contains a NUL character, which cannot be stored", field=field)


async def publish(
    session: AsyncSession,
    *,
    organization_id: uuid.UUID,
    event_type: str,
    payload: dict[str, Any],
    message_id: str | None = None,
) -> Published:
    """Store the message (once per ``message_id``) and create its deliveries."""
    check_event_type(event_type)
    check_payload(payload)
    now = utcnow()
    row_id = new_id()
    key = message_id or f"msg_{row_id.hex}"
    inserted = await session.scalar(
        pg_insert(WebhookMessage)
        .values(
            id=row_id, organization_id=organization_id, message_id=key, event_type=event_type,
            payload=payload, created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "message_id"])
        .returning(WebhookMessage.id)
    )  # fmt: skip
    if inserted is None:
        existing = await session.scalar(
            select(WebhookMessage).where(
                WebhookMessage.organization_id == organization_id, WebhookMessage.message_id == key
            )
        )
        assert existing is not None  # the conflicting row is committed: ON CONFLICT waited for it
        count = await session.scalar(
            select(func.count()).where(WebhookDelivery.webhook_message_id == existing.id)
        )
        return Published(
            existing.id, key, existing.event_type, existing.created_at, duplicate=True, deliveries=count or 0
        )
    endpoints = await session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.organization_id == organization_id,
            WebhookEndpoint.enabled.is_(True),
            WebhookEndpoint.deleted_at.is_(None),
        )
    )
    targets = [endpoint_id for endpoint_id, filters in endpoints.all() if matches(filters, event_type)]
    if targets:
        await session.execute(
            insert(WebhookDelivery),
            [
                {
                    "id": new_id(), "organization_id": organization_id, "endpoint_id": endpoint_id,
                    "webhook_message_id": row_id, "event_type": event_type,
                    "status": DeliveryStatus.pending, "attempts": 0, "next_attempt_at": now,
                    "created_at": now, "updated_at": now,
                }
                for endpoint_id in targets
            ],
        )  # fmt: skip
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    return Published(row_id, key, event_type, now, duplicate=False, deliveries=len(targets))
