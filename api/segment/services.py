"""Segment calls onto Keel's one ingest path.

Each call is judged on its own (one bad call is one rejection, recorded as an ingestion warning,
never a failed request): its organization resolved (``context.groupId``, or ``groupId`` on a
``group`` call: a Keel organization id or an ``external_id``), its fields normalized in place into
an :class:`EventIn`'s, and :func:`api.events.services.ingest` judges it exactly as it judges Keel's
own events: the same dedupe on ``messageId`` per org, clock-skew correction with ``sentAt``,
statement and commit. Then the traits of the ``identify``, ``group`` and ``alias`` calls that
passed are applied (:mod:`api.people.store`), before the answer.

A batch streams through the ingest path as Keel's own does: each call is decoded by the ingest
loop's per-item hook (:class:`CallReader`) and becomes its row before the next one is read, so no
call outlives its row (decoding a whole batch first cost the server 1.4x Keel's CPU per event,
most of it in the decode itself: ``bench/bench_segment.py``). That needs the organizations known
first: the references are found before the loop (:func:`find_refs`, a byte search of the body,
which finds none in the common case of an org key, then a small decode of only the calls that may
carry one) and resolved in one query a request.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from api.auth.context import Principal
from api.events import services as events
from api.events.schemas import IngestResult
from api.events.services import ItemRejected, Origin, check_item_bytes, json_rejection
from api.events.store import EventRow, EventWriter, PartitionKeeper, PgConnection
from api.people import store as people
from api.schemas import split_validation_message
from api.segment.schemas import RESERVED_EVENTS, SegmentMessage, SegmentRef
from api.tokens.models import TokenKind
from warehouse import rules

T = TypeVar("T")
_decode_message = msgspec.json.Decoder(SegmentMessage)
_decode_ref = msgspec.json.Decoder(SegmentRef)
_TRAIT_CALLS = frozenset({"identify", "group", "alias"})
#: The bytes a call naming an organization must hold: the key itself, or a backslash (a ``\\u``
#: escape is the only other way to spell one of its letters). A backslash is one ``memchr``.
_REF_KEY, _ESCAPE = b"groupId", b"\\"


def decode_call(raw: msgspec.Raw | bytes, implied_type: str | None) -> SegmentMessage:
    """One call's bytes as a :class:`SegmentMessage`, or :class:`ItemRejected` saying why not."""
    data = check_item_bytes(raw, "message")
    try:
        message = _decode_message.decode(data)
    except msgspec.ValidationError as exc:
        field, text = split_validation_message(str(exc))
        raise ItemRejected(text, field=_camel(field) or None) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise json_rejection(data, exc) from None
    if implied_type is not None:
        message.type = implied_type  # type: ignore[assignment]
    return message


def _ref_of(kind: str | None, group_id: Any, context: Any) -> str | None:
    """What names a call's organization: ``groupId`` on a group call, else ``context.groupId``."""
    if kind == "group":
        ref = group_id
    elif context:
        ref = context.get("groupId") if type(context) is dict else context.group_id
    else:
        return None
    return None if ref is None else str(ref)


def find_refs(body: bytes, raws: list[msgspec.Raw]) -> set[str]:
    """The organization references a request's calls carry, found without decoding the calls that
    cannot carry one. A call it misses (none should) finds no organization and is refused as
    naming an unknown one: never stored under another org."""
    if _REF_KEY not in body and _ESCAPE not in body:
        return set()
    refs = set()
    for raw in raws:
        try:
            data = check_item_bytes(raw, "message")
            if _REF_KEY not in data and _ESCAPE not in data:
                continue
            probe = _decode_ref.decode(data)
        except (ItemRejected, msgspec.DecodeError, UnicodeDecodeError):
            continue  # refused when decoded in full
        ref = _ref_of(probe.type, probe.group_id, probe.context)
        if ref is not None:
            refs.add(ref)
    return refs


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


class CallReader:
    """The ingest loop's per-item hook for one request: a call (its bytes, or decoded already) in,
    the same message out with an ``EventIn``'s fields, or :class:`ItemRejected` saying why not."""

    __slots__ = ("batch_context", "batch_integrations", "orgs", "platform", "traits")

    def __init__(
        self,
        principal: Principal,
        orgs: dict[str, uuid.UUID],
        *,
        batch_context: dict[str, Any] | None = None,
        batch_integrations: dict[str, Any] | None = None,
    ) -> None:
        self.platform = principal.kind is TokenKind.platform_ingest
        self.orgs = orgs
        self.batch_context = batch_context or None
        self.batch_integrations = batch_integrations
        #: Whether an identify, group or alias call was read (its traits to apply after the write).
        self.traits = False

    def read(self, raw: msgspec.Raw | bytes) -> SegmentMessage:
        """A batch's call, from its bytes."""
        return self.normalize(decode_call(raw, None))

    def normalize(self, message: SegmentMessage | ItemRejected) -> SegmentMessage:
        """A call decoded already (or the refusal its decoding was)."""
        if type(message) is ItemRejected:
            raise message
        assert type(message) is SegmentMessage
        try:
            self._normalize(message)
        except ItemRejected as exc:
            exc.message_id = message.message_id
            raise
        return message

    def _normalize(self, message: SegmentMessage) -> None:
        kind = message.type
        if kind is None:
            raise ItemRejected("is required (track, identify, group, page, screen or alias)", field="type")
        context = message.context
        ref = _ref_of(kind, message.group_id, context)
        if ref is not None:
            org_id = self.orgs.get(ref)
            if org_id is None:
                raise ItemRejected(
                    f"no organization has the id or external_id {ref[:100]!r}",
                    field="groupId" if kind == "group" else "context.groupId",
                    reason="unknown_org",
                )
            message.org_id = org_id
        elif self.platform:
            raise ItemRejected(
                "is required with a platform key: it names the organization (its id or external_id)",
                field="groupId" if kind == "group" else "context.groupId",
                reason="unknown_org",
            )
        else:
            message.org_id = None  # whatever the client sent under that name
        if kind == "track":
            if message.event is None:
                raise ItemRejected("is required on a track call", field="event")
            if message.properties is None:
                message.properties = {}
        else:
            message.properties = _reserved_properties(message)
            message.event = RESERVED_EVENTS[kind]
            if kind in _TRAIT_CALLS:
                self.traits = True
        if self.batch_context is not None:
            context = {**self.batch_context, **(context or {})}
        elif context is None:
            context = {}
        integrations = message.integrations
        if integrations is None:
            integrations = self.batch_integrations
        if integrations:
            context = {**context, "integrations": integrations}
        message.context = context
        if type(message.user_id) is int:
            message.user_id = str(message.user_id)
        if type(message.anonymous_id) is int:
            message.anonymous_id = str(message.anonymous_id)
        timestamp = message.timestamp or message.original_timestamp
        if timestamp is not None and timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        message.timestamp = timestamp
        sent_at = message.sent_at
        if sent_at is not None and sent_at.tzinfo is None:
            message.sent_at = sent_at.replace(tzinfo=UTC)


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


async def ingest_batch(
    writer: EventWriter,
    body: bytes,
    raws: list[msgspec.Raw],
    *,
    principal: Principal,
    partitions: PartitionKeeper,
    origin: Origin,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_integrations: dict[str, Any] | None = None,
) -> IngestResult:
    """Store a batch's calls (``raws``, cut out of ``body``) through Keel's ingest path, then apply
    their traits. A refused call is a rejection in the result and an ingestion warning."""
    reader = CallReader(
        principal, await _resolve(writer, find_refs(body, raws)),
        batch_context=batch_context, batch_integrations=batch_integrations,
    )  # fmt: skip
    return await _ingest(
        writer, raws, reader, reader.read, principal=principal, partitions=partitions, origin=origin,
        batch_sent_at=batch_sent_at, sample=None, raise_rejected=False,
    )  # fmt: skip


async def ingest_one(
    writer: EventWriter,
    body: bytes,
    call: SegmentMessage | ItemRejected,
    *,
    principal: Principal,
    partitions: PartitionKeeper,
    origin: Origin,
) -> IngestResult:
    """Store one call sent alone (decoded already from ``body`` by :func:`decode_call`): a refusal
    is raised as its domain error, after its ingestion warning."""
    refs: set[str] = set()
    if type(call) is SegmentMessage:
        ref = _ref_of(call.type, call.group_id, call.context)
        if ref is not None:
            refs.add(ref)
    reader = CallReader(principal, await _resolve(writer, refs))
    return await _ingest(
        writer, [call], reader, reader.normalize, principal=principal, partitions=partitions,
        origin=origin, batch_sent_at=None, sample=lambda _: body, raise_rejected=True,
    )  # fmt: skip


async def _resolve(writer: EventWriter, refs: set[str]) -> dict[str, uuid.UUID]:
    if not refs:
        return {}
    return await writer.run(lambda conn: resolve_orgs(conn, refs))  # type: ignore[arg-type]


async def _ingest(
    writer: EventWriter,
    items: Sequence[T],
    reader: CallReader,
    to_item: Callable[[T], SegmentMessage],
    *,
    principal: Principal,
    partitions: PartitionKeeper,
    origin: Origin,
    batch_sent_at: datetime | None,
    sample: Callable[[int], bytes] | None,
    raise_rejected: bool,
) -> IngestResult:
    passed: list[EventRow] = []
    result = await events.ingest(
        writer,
        items,
        principal=principal,
        partitions=partitions,
        origin=origin,
        batch_sent_at=_aware(batch_sent_at),
        to_item=to_item,  # type: ignore[arg-type]  # a SegmentMessage has an EventIn's fields
        sample=sample,
        passed=passed,
        raise_rejected=raise_rejected,
    )
    if reader.traits:
        traited = [row for row in passed if row.event in people.TRAIT_EVENTS]
        if traited:
            await writer.run(lambda conn: people.apply(conn, traited))
    return result
