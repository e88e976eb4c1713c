"""Segment calls onto Keel's one ingest path.

Each call is decoded on its own (one bad call is one rejection, recorded as an ingestion warning,
never a failed request), its organization resolved (``context.groupId``, or ``groupId`` on a
``group`` call: a Keel organization id or an ``external_id``), and it becomes an :class:`EventIn`
that :func:`api.events.services.ingest` judges exactly as it judges Keel's own events: the same
dedupe on ``messageId`` per org, clock-skew correction with ``sentAt``, statement and commit.
Then the traits of the ``identify``, ``group`` and ``alias`` calls that passed are applied
(:mod:`api.people.store`), before the answer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from api.auth.context import Principal
from api.events import services as events
from api.events.schemas import EventIn, IngestResult
from api.events.services import ItemRejected, Origin, check_item_bytes, json_rejection
from api.events.store import EventRow, EventWriter, PartitionKeeper, PgConnection
from api.people import store as people
from api.schemas import split_validation_message
from api.segment.schemas import RESERVED_EVENTS, SegmentMessage
from api.tokens.models import TokenKind
from warehouse import rules

_decode_message = msgspec.json.Decoder(SegmentMessage)
_LIMITS = {"event": 200, "user_id": 255, "anonymous_id": 255, "message_id": 128}


class Call(msgspec.Struct, gc=False):
    """One call of a request: its bytes (the warning's sample) and what decoding made of them."""

    raw: msgspec.Raw | bytes
    message: SegmentMessage | None = None
    rejected: ItemRejected | None = None
    org_ref: str | None = None


def decode_call(raw: msgspec.Raw | bytes, implied_type: str | None) -> Call:
    """Decode one call; a refusal is kept on the :class:`Call`, to be reported at its index."""
    try:
        data = check_item_bytes(raw, "message")
        try:
            message = _decode_message.decode(data)
        except msgspec.ValidationError as exc:
            field, text = split_validation_message(str(exc))
            raise ItemRejected(text, field=_camel(field) or None) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise json_rejection(data, exc) from None
    except ItemRejected as exc:
        return Call(raw, rejected=exc)
    if implied_type is not None:
        message.type = implied_type  # type: ignore[assignment]
    ref = message.group_id if message.type == "group" else (message.context or {}).get("groupId")
    return Call(raw, message=message, org_ref=None if ref is None else str(ref))


def _camel(path: str) -> str:
    head, _, rest = path.partition(".")
    parts = head.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]) + (f".{rest}" if rest else "")


_RESOLVE = f"""
SELECT ref, o.id FROM unnest(%s::text[]) AS ref
JOIN organizations o ON (o.external_id = ref OR o.id::text = lower(ref))
WHERE {rules.ORG_IS_LIVE.sql("o.deleted_at")}
ORDER BY (o.id::text = lower(ref)) DESC"""


async def resolve_orgs(conn: PgConnection, refs: set[str]) -> dict[str, uuid.UUID]:
    """Which live organization each reference names: its Keel id, else its ``external_id``."""
    found: dict[str, uuid.UUID] = {}
    for ref, org_id in await (await conn.execute(_RESOLVE, (sorted(refs),))).fetchall():
        found.setdefault(ref, org_id)
    return found


def _text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def _aware(value: datetime | None) -> datetime | None:
    # Segment reads a time without an offset as UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def to_event(
    call: Call,
    *,
    principal: Principal,
    orgs: dict[str, uuid.UUID],
    batch_context: dict[str, Any] | None,
    batch_integrations: dict[str, Any] | None,
) -> EventIn:
    """One decoded call as a Keel event (``api.events.services.row_of`` applies the rules)."""
    if call.rejected is not None:
        raise call.rejected
    message = call.message
    assert message is not None
    try:
        return _event_of(message, call.org_ref, principal, orgs, batch_context, batch_integrations)
    except ItemRejected as exc:
        exc.message_id = message.message_id
        raise


def _event_of(
    message: SegmentMessage,
    ref: str | None,
    principal: Principal,
    orgs: dict[str, uuid.UUID],
    batch_context: dict[str, Any] | None,
    batch_integrations: dict[str, Any] | None,
) -> EventIn:
    kind = message.type
    ref_field = "groupId" if kind == "group" else "context.groupId"
    if kind is None:
        raise ItemRejected("is required (track, identify, group, page, screen or alias)", field="type")
    org_id: uuid.UUID | None = None
    if ref is not None:
        org_id = orgs.get(ref)
        if org_id is None:
            raise ItemRejected(
                f"no organization has the id or external_id {ref[:100]!r}",
                field=ref_field,
                reason="unknown_org",
            )
    elif principal.kind is TokenKind.platform_ingest:
        raise ItemRejected(
            "is required with a platform key: it names the organization (its id or external_id)",
            field=ref_field,
            reason="unknown_org",
        )
    if kind == "track":
        if not message.event:
            raise ItemRejected("is required on a track call", field="event")
        name = message.event
        properties = message.properties or {}
    else:
        name = RESERVED_EVENTS[kind]
        properties = _reserved_properties(message)
    context = {**batch_context, **(message.context or {})} if batch_context else message.context or {}
    integrations = message.integrations if message.integrations is not None else batch_integrations
    if integrations:
        context = {**context, "integrations": integrations}
    item = EventIn(
        event=name,
        user_id=_text(message.user_id),
        anonymous_id=_text(message.anonymous_id),
        message_id=message.message_id,
        timestamp=_aware(message.timestamp or message.original_timestamp),
        sent_at=_aware(message.sent_at),
        properties=properties,
        context=context,
        org_id=org_id,
    )
    for field, limit in _LIMITS.items():
        value = getattr(item, field)
        if value is not None and not 1 <= len(value) <= limit:
            raise ItemRejected(f"must be 1-{limit} characters", field=_camel(field))
    return item


def _reserved_properties(message: SegmentMessage) -> dict[str, Any]:
    """What a non-track call carries, under documented keys of the stored event's properties."""
    kind = message.type
    if kind in ("page", "screen"):
        properties = dict(message.properties or {})
        for key in ("name", "category"):
            value = getattr(message, key)
            if value is not None:
                properties.setdefault(key, value)
        return properties
    if kind == "identify":
        return {"traits": message.traits or {}}
    if kind == "group":
        return {"group_id": str(message.group_id), "traits": message.traits or {}}
    if message.previous_id is None:
        raise ItemRejected("is required on an alias call", field="previousId")
    if message.user_id is None:
        raise ItemRejected("is required on an alias call", field="userId")
    return {"previous_id": str(message.previous_id)}


async def ingest_calls(
    writer: EventWriter,
    calls: list[Call],
    *,
    principal: Principal,
    partitions: PartitionKeeper,
    origin: Origin,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
) -> IngestResult:
    """Store a request's calls through Keel's ingest path, then apply their traits."""
    refs = {call.org_ref for call in calls if call.org_ref is not None}
    orgs: dict[str, uuid.UUID] = {}
    if refs:
        orgs = await writer.run(lambda conn: resolve_orgs(conn, refs))  # type: ignore[arg-type]
    passed: list[EventRow] = []
    result = await events.ingest(
        writer,
        calls,
        principal=principal,
        partitions=partitions,
        origin=origin,
        batch_sent_at=_aware(batch_sent_at),
        to_item=lambda call: to_event(
            call,
            principal=principal,
            orgs=orgs,
            batch_context=batch_context,
            batch_integrations=batch_integrations,
        ),
        sample=lambda call: bytes(call.raw),
        passed=passed,
    )
    traited = [row for row in passed if row.event in people.TRAIT_EVENTS]
    if traited:
        await writer.run(lambda conn: people.apply(conn, traited))
    return result
