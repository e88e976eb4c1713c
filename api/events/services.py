"""Event ingestion: validate each item, correct clock skew, dedupe per org, store in one statement.

A batch is one transaction: its valid items are stored together or not at all, and the caller
answers only after the commit. Dedupe is exact: ``event_keys`` holds (organization, message_id)
for as long as the event stays in Postgres. Writing is :mod:`api.events.store`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from api import metrics
from api.auth.context import Principal
from api.bodies import TOO_DEEP, nests_too_deep, utf8_problem
from api.db.base import new_id
from api.errors import BadRequest, KeelError, PayloadTooLarge, ValidationFailed
from api.events.schemas import MAX_EVENT_BYTES, EventIn, IngestResult, Rejection
from api.events.store import (
    PARTITION_DAYS_AHEAD,
    EventRow,
    EventWriter,
    PartitionKeeper,
    SessionWriter,
    Writer,
    keep_event_partitions,
)
from api.ingestion import warnings
from api.orgs.models import OrgStatus
from api.schemas import split_validation_message
from api.tokens.models import TokenKind

__all__ = [
    "PARTITION_DAYS_AHEAD",
    "EventWriter",
    "Origin",
    "PartitionKeeper",
    "ingest",
    "keep_event_partitions",
    "prepare",
]

MAX_FUTURE = timedelta(hours=24)
T = TypeVar("T")

_decode_event = msgspec.json.Decoder(EventIn)
_encode = msgspec.json.Encoder()


class ItemRejected(Exception):
    """One event refused: ``error`` is the rejection's text (``field: message`` when a field is to
    blame); :meth:`problem` is the answer to a request that sent this event alone."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        problem: type[KeelError] = ValidationFailed,
        reason: str = "invalid_field",
    ) -> None:
        self.error = f"{field}: {message}" if field else message
        super().__init__(self.error)
        self.field = field
        self.kind = problem
        #: The ingestion warning's reason (``api/ingestion/services.py`` lists them).
        self.reason = reason
        self.message_id: str | None = None

    def problem(self) -> KeelError:
        if self.kind is ValidationFailed:
            return ValidationFailed(self.error, field=self.field or "body")
        if self.kind is BadRequest:
            return BadRequest(f"the request body is {self.error}")
        return self.kind(self.error)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the request came from: fills an event's context when the client left it out."""

    ip: str | None
    user_agent: str | None


def _storable(value: str | None, field: str) -> None:
    # Postgres text cannot hold NUL, and UTF-8 cannot hold lone surrogates.
    if value is None:
        return
    if "\x00" in value:
        raise ItemRejected("contains a NUL character", field=field)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ItemRejected("is not valid Unicode", field=field) from None


def _check_text(item: EventIn) -> None:
    """:func:`_storable` for the four text fields, in one pass when they are plain ASCII (most are)."""
    joined = f"{item.event}{item.user_id or ''}{item.anonymous_id or ''}{item.message_id or ''}"
    if joined.isascii() and "\x00" not in joined:
        return
    for name in ("event", "user_id", "anonymous_id", "message_id"):
        _storable(getattr(item, name), name)


def _json(value: dict[str, Any], field: str) -> msgspec.Raw:
    # msgspec refuses lone surrogates when encoding, so what it returns is valid UTF-8.
    try:
        encoded = _encode.encode(value)
    except (TypeError, UnicodeEncodeError, OverflowError) as exc:
        raise ItemRejected(f"cannot be stored ({exc})", field=field) from None
    if b"\\u0000" in encoded:
        raise ItemRejected("contains a NUL character, which JSONB cannot store", field=field)
    return msgspec.Raw(encoded)


def decode_event(raw: bytes | msgspec.Raw) -> EventIn:
    """One Keel event's bytes as an :class:`EventIn`, or :class:`ItemRejected` saying why not."""
    data = check_item_bytes(raw, "event")
    try:
        return _decode_event.decode(data)
    except msgspec.ValidationError as exc:
        field, message = split_validation_message(str(exc))
        raise ItemRejected(message, field=field or None) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise json_rejection(data, exc) from None


def check_item_bytes(raw: bytes | msgspec.Raw, what: str) -> bytes:
    """An item's bytes, refused when over :data:`MAX_EVENT_BYTES` or nested too deep (the limits
    every ingest format shares)."""
    size = len(raw)
    if size > MAX_EVENT_BYTES:
        raise ItemRejected(
            f"{what} is {size} bytes; the limit is {MAX_EVENT_BYTES}",
            problem=PayloadTooLarge,
            reason="oversized",
        )
    data = bytes(raw)
    if nests_too_deep(data):
        raise ItemRejected(f"the {what} {TOO_DEEP}")
    return data


def json_rejection(data: bytes, exc: Exception) -> ItemRejected:
    """An item whose bytes a decoder refused: the envelope's decoder skipped them unchecked."""
    problem = utf8_problem(data)
    if problem:
        return ItemRejected(f"the event {problem}")
    return ItemRejected(f"not valid JSON: {exc}", problem=BadRequest)


def prepare(
    raw: bytes | msgspec.Raw,
    *,
    principal: Principal,
    received_at: datetime,
    batch_sent_at: datetime | None,
    origin: Origin,
) -> EventRow:
    """Validate one event and turn it into a row; raise :class:`ItemRejected` saying why not."""
    return row_of(
        decode_event(raw), principal=principal, received_at=received_at,
        batch_sent_at=batch_sent_at, origin=origin,
    )  # fmt: skip


def row_of(
    item: EventIn,
    *,
    principal: Principal,
    received_at: datetime,
    batch_sent_at: datetime | None,
    origin: Origin,
) -> EventRow:
    """The rules every event obeys, whatever its wire format: identity, org, clock skew, storable text."""
    message_id = item.message_id or str(new_id())
    try:
        if item.user_id is None and item.anonymous_id is None:
            raise ItemRejected("user_id or anonymous_id is required")
        if principal.kind is TokenKind.org_ingest:
            assert principal.organization_id is not None
            if item.org_id is not None and item.org_id != principal.organization_id:
                raise ItemRejected(
                    "an org ingest key writes only to its own organization",
                    field="org_id",
                    reason="foreign_org",
                )
            org_id = principal.organization_id
        elif item.org_id is None:
            raise ItemRejected("required with a platform ingest key", field="org_id", reason="unknown_org")
        else:
            org_id = item.org_id
        _check_text(item)
        timestamp = item.timestamp or received_at
        sent_at = item.sent_at or batch_sent_at
        if sent_at is not None:
            # The client's clock is off by (sent_at - received_at); shift its timestamp back.
            try:
                timestamp = timestamp + (received_at - sent_at)
            except OverflowError:  # e.g. a timestamp in year 1 sent by a clock in year 9999
                raise ItemRejected(
                    "out of range after clock-skew correction",
                    field="timestamp",
                    reason="timestamp_out_of_range",
                ) from None
        if timestamp - received_at > MAX_FUTURE:
            raise ItemRejected(
                "more than 24 h in the future, even after clock-skew correction",
                field="timestamp",
                reason="timestamp_out_of_range",
            )
        context = item.context
        if origin.ip and "ip" not in context:
            context = {**context, "ip": origin.ip}
        if origin.user_agent and "user_agent" not in context:
            context = {**context, "user_agent": origin.user_agent}
        return EventRow(
            organization_id=org_id,
            message_id=message_id,
            event=item.event,
            user_id=item.user_id,
            anonymous_id=item.anonymous_id,
            timestamp=timestamp.astimezone(UTC),
            sent_at=sent_at,
            received_at=received_at,
            properties=_json(item.properties, "properties"),
            context=_json(context, "context"),
        )
    except ItemRejected as exc:
        exc.message_id = exc.message_id or item.message_id
        raise


async def ingest(
    db: EventWriter | AsyncSession,
    raws: Sequence[T],
    *,
    principal: Principal,
    partitions: PartitionKeeper,
    origin: Origin,
    batch_sent_at: datetime | None = None,
    received_at: datetime | None = None,
    raise_rejected: bool = False,
    to_item: Callable[[T], EventIn] = decode_event,  # type: ignore[assignment]
    sample: Callable[[int], bytes] | None = None,
    passed: list[EventRow] | None = None,
) -> IngestResult:
    """Store the valid events of one batch; count and explain the rest. With ``raise_rejected``
    (one event sent alone), the first rejection is raised as its domain error instead.

    ``raws`` are Keel events' bytes, or, with ``to_item``, anything that function turns into an
    :class:`EventIn` (another wire format: :mod:`api.segment`), raising :class:`ItemRejected`.
    ``sample`` gives the bytes of the item at an index, for its ingestion warning (the item's
    own, by default); ``passed``, when given, receives the rows that passed every check (stored
    now or before: the caller's follow-up writes are idempotent). Rejections are recorded as
    ingestion warnings (never failing the batch). ``db`` is a session (the events join its
    transaction; ``partitions`` is its day cache) or the API's :class:`EventWriter` (the batch is
    durable when this returns)."""
    writer: Writer = SessionWriter(db, partitions) if isinstance(db, AsyncSession) else db
    received_at = received_at or datetime.now(UTC)
    rejected: list[Rejection] = []
    problems: dict[int, ItemRejected] = {}
    rows: list[tuple[int, EventRow]] = []
    for index, raw in enumerate(raws):
        try:
            rows.append(
                (index, row_of(to_item(raw), principal=principal, received_at=received_at,
                               batch_sent_at=batch_sent_at, origin=origin))
            )  # fmt: skip
        except ItemRejected as exc:
            rejected.append(Rejection(index=index, message_id=exc.message_id, error=exc.error))
            problems[index] = exc

    if principal.kind is TokenKind.platform_ingest and rows:
        live = await writer.live_orgs({row.organization_id for _, row in rows})
        kept = []
        for index, row in rows:
            status = live.get(row.organization_id)
            if status is None or status is OrgStatus.suspended:
                why = ItemRejected(
                    "no such organization" if status is None else "the organization is suspended",
                    field="org_id",
                    reason="unknown_org" if status is None else "suspended_org",
                )
                why.message_id = row.message_id
                rejected.append(Rejection(index, row.message_id, why.error))
                problems[index] = why
            else:
                kept.append((index, row))
        rows = kept

    # The same key twice in one batch: the first one counts, the rest are duplicates. An org key's
    # rows all have its org, so the message id alone is the key (hashing UUIDs is Python code).
    seen: set[str | tuple[uuid.UUID, str]] = set()
    unique: list[EventRow] = []
    one_org = principal.kind is TokenKind.org_ingest
    for _, row in rows:
        key = row.message_id if one_org else (row.organization_id, row.message_id)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    inserted = await writer.write(unique) if unique else 0
    rejected.sort(key=lambda r: r.index)
    metrics.EVENTS_ACCEPTED.inc(inserted)
    metrics.EVENTS_DUPLICATES.inc(len(rows) - inserted)
    metrics.EVENTS_REJECTED.inc(len(rejected))
    if problems:

        def sample_of(index: int) -> bytes:
            return sample(index) if sample is not None else bytes(raws[index])  # type: ignore[call-overload]

        await warnings.record(
            writer,
            [warnings.of_rejection(exc, principal=principal, sample=sample_of(index), at=received_at)
             for index, exc in problems.items()],
        )  # fmt: skip
    if raise_rejected and rejected:
        raise problems[rejected[0].index].problem()
    if passed is not None:
        passed.extend(row for _, row in rows)
    return IngestResult(accepted=inserted, duplicates=len(rows) - inserted, rejected=rejected)
