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
from api.events.schemas import IngestResult
from api.events.services import ItemRejected, Origin, check_item_bytes, json_rejection
from api.events.store import EventRow, EventWriter, PartitionKeeper, PgConnection
from api.people import store as people
from api.schemas import split_validation_message
from api.segment.schemas import RESERVED_EVENTS, SegmentMessage
from api.tokens.models import TokenKind
from warehouse import rules

_decode_message = msgspec.json.Decoder(SegmentMessage)

#: One call of a request: its bytes (the warning's sample), what decoding made of them, and the
#: reference to its organization it carries (``groupId`` on a group call, else ``context.groupId``).
Call = tuple[msgspec.Raw | bytes, SegmentMessage | ItemRejected, str | None]


def decode_call(raw: msgspec.Raw | bytes, implied_type: str | None) -> Call:
    """Decode one call; a refusal is kept in the :data:`Call`, to be reported at its index."""
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
        return raw, exc, None
    if implied_type is not None:
        message.type = implied_type  # type: ignore[assignment]
    return raw, message, org_ref(message)


def org_ref(message: SegmentMessage) -> str | None:
    """What names the call's organization: ``groupId`` on a group call, else ``context.groupId``."""
    if message.type == "group":
        ref = message.group_id
    elif message.context:
        ref = message.context.get("groupId")
    else:
        return None
    return None if ref is None else str(ref)


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


def _aware(value: datetime | None) -> datetime | None:
    # Segment reads a time without an offset as UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _normalize(
    message: SegmentMessage,
    ref: str | None,
    principal: Principal,
    orgs: dict[str, uuid.UUID],
    batch_context: dict[str, Any] | None,
    batch_integrations: dict[str, Any] | None,
) -> None:
    kind = message.type
    if kind is None:
        raise ItemRejected("is required (track, identify, group, page, screen or alias)", field="type")
    message.org_id = None
    if ref is not None:
        org_id = orgs.get(ref)
        if org_id is None:
            raise ItemRejected(
                f"no organization has the id or external_id {ref[:100]!r}",
                field="groupId" if kind == "group" else "context.groupId",
                reason="unknown_org",
            )
        message.org_id = org_id
    elif principal.kind is TokenKind.platform_ingest:
        raise ItemRejected(
            "is required with a platform key: it names the organization (its id or external_id)",
            field="groupId" if kind == "group" else "context.groupId",
            reason="unknown_org",
        )
    if kind == "track":
        if message.event is None:
            raise ItemRejected("is required on a track call", field="event")
        if message.properties is None:
            message.properties = {}
    else:
        message.properties = _reserved_properties(message)
        message.event = RESERVED_EVENTS[kind]
    context = message.context
    if batch_context:
        context = {**batch_context, **(context or {})}
    elif context is None:
        context = {}
    integrations = message.integrations if message.integrations is not None else batch_integrations
    if integrations:
        context = {**context, "integrations": integrations}
    message.context = context
    if type(message.user_id) is int:
        message.user_id = str(message.user_id)
    if type(message.anonymous_id) is int:
        message.anonymous_id = str(message.anonymous_id)
    timestamp = message.timestamp or message.original_timestamp
    message.timestamp = (
        timestamp.replace(tzinfo=UTC) if timestamp is not None and timestamp.tzinfo is None else timestamp
    )
    if message.sent_at is not None and message.sent_at.tzinfo is None:
        message.sent_at = message.sent_at.replace(tzinfo=UTC)


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
    raise_rejected: bool = False,
) -> IngestResult:
    """Store a request's calls through Keel's ingest path, then apply their traits."""
    refs = {ref for _, _, ref in calls if ref is not None}
    orgs: dict[str, uuid.UUID] = {}
    if refs:
        orgs = await writer.run(lambda conn: resolve_orgs(conn, refs))  # type: ignore[arg-type]
    # Normalized here, in one loop, so the ingest path's per-item hook is a plain unwrap.
    items: list[SegmentMessage | ItemRejected] = []
    for _, message, ref in calls:
        if type(message) is SegmentMessage:
            try:
                _normalize(message, ref, principal, orgs, batch_context, batch_integrations)
            except ItemRejected as exc:
                exc.message_id = message.message_id
                message = exc
        items.append(message)
    passed: list[EventRow] = []
    result = await events.ingest(
        writer,
        items,
        principal=principal,
        partitions=partitions,
        origin=origin,
        batch_sent_at=_aware(batch_sent_at),
        to_item=None,
        sample=lambda index: bytes(calls[index][0]),
        passed=passed,
        raise_rejected=raise_rejected,
    )
    traited = [row for row in passed if row.event in people.TRAIT_EVENTS]
    if traited:
        await writer.run(lambda conn: people.apply(conn, traited))
    return result
