"""Event ingestion: validate each item, correct clock skew, dedupe per org, store in one statement.

A batch is one transaction: its valid items are stored together or not at all, and the caller
answers only after the commit. Dedupe is exact: ``event_keys`` holds (organization, message_id)
for as long as the event stays in Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from api import metrics
from api.auth.context import Principal
from api.db.base import new_id
from api.db.fence import EXPORT_FENCE_LOCK
from api.db.models import Organization, OrgStatus, TokenKind
from api.events.schemas import MAX_EVENT_BYTES, EventIn, IngestResult, Rejection
from api.schemas import split_validation_message

log = logging.getLogger("keel.events")
MAX_FUTURE = timedelta(hours=24)
PARTITION_DAYS_AHEAD = 7

_decode_event = msgspec.json.Decoder(EventIn)
_encode = msgspec.json.Encoder()

CLAIM_KEYS = """
INSERT INTO event_keys (organization_id, message_id, received_at)
SELECT k.organization_id, k.message_id, %s
FROM unnest(%s::uuid[], %s::text[]) AS k(organization_id, message_id)
ON CONFLICT DO NOTHING
RETURNING organization_id, message_id
"""
#: Small batches (single events, mostly) go in one statement: one round trip instead of three.
SMALL_BATCH = 32
INSERT_SMALL = """
WITH fence AS (SELECT pg_advisory_xact_lock_shared(%s) AS held),
incoming AS (
    SELECT * FROM unnest(
        %s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
        %s::text[], %s::text[]
    ) AS t(organization_id, message_id, event, user_id, anonymous_id, ts, sent_at, properties, context)
),
fresh AS (
    INSERT INTO event_keys (organization_id, message_id, received_at)
    SELECT i.organization_id, i.message_id, %s FROM incoming i, fence
    ON CONFLICT DO NOTHING
    RETURNING organization_id, message_id
)
INSERT INTO events (organization_id, message_id, event, user_id, anonymous_id, timestamp, sent_at,
                    received_at, properties, context)
SELECT i.organization_id, i.message_id, i.event, i.user_id, i.anonymous_id, i.ts, i.sent_at, %s,
       i.properties::jsonb, i.context::jsonb
FROM incoming i JOIN fresh f USING (organization_id, message_id)
"""
COPY_EVENTS = (
    "COPY events (organization_id, message_id, event, user_id, anonymous_id, timestamp, sent_at,"
    " received_at, properties, context) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = [
    "uuid",
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "jsonb",
    "jsonb",
]


class ItemRejected(Exception):
    def __init__(self, error: str, message_id: str | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.message_id = message_id


@dataclass(slots=True)
class Row:
    organization_id: uuid.UUID
    message_id: str
    event: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    sent_at: datetime | None
    properties: str
    context: str


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
        raise ItemRejected(f"{field}: contains a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ItemRejected(f"{field}: is not valid Unicode") from None


def _json(value: dict[str, Any], field: str) -> str:
    try:
        encoded = _encode.encode(value)
    except (TypeError, UnicodeEncodeError, OverflowError) as exc:
        raise ItemRejected(f"{field}: cannot be stored ({exc})") from None
    if b"\\u0000" in encoded:
        raise ItemRejected(f"{field}: contains a NUL character, which JSONB cannot store")
    try:
        return encoded.decode()
    except UnicodeDecodeError:
        raise ItemRejected(f"{field}: is not valid Unicode") from None


def prepare(
    raw: bytes | msgspec.Raw,
    *,
    principal: Principal,
    received_at: datetime,
    batch_sent_at: datetime | None,
    origin: Origin,
) -> Row:
    """Validate one event and turn it into a row; raise :class:`ItemRejected` saying why not."""
    size = len(raw)
    if size > MAX_EVENT_BYTES:
        raise ItemRejected(f"event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        item = _decode_event.decode(raw)
    except msgspec.ValidationError as exc:
        field, message = split_validation_message(str(exc))
        raise ItemRejected(f"{field}: {message}" if field else message) from None
    except msgspec.DecodeError as exc:
        raise ItemRejected(f"not valid JSON: {exc}") from None
    message_id = item.message_id or str(new_id())
    try:
        if item.user_id is None and item.anonymous_id is None:
            raise ItemRejected("user_id or anonymous_id is required")
        if principal.kind is TokenKind.org_ingest:
            assert principal.organization_id is not None
            if item.org_id is not None and item.org_id != principal.organization_id:
                raise ItemRejected("org_id: an org ingest key writes only to its own organization")
            org_id = principal.organization_id
        elif item.org_id is None:
            raise ItemRejected("org_id: required with a platform ingest key")
        else:
            org_id = item.org_id
        for name in ("event", "user_id", "anonymous_id", "message_id"):
            _storable(getattr(item, name), name)
        timestamp = item.timestamp or received_at
        sent_at = item.sent_at or batch_sent_at
        if sent_at is not None:
            # The client's clock is off by (sent_at - received_at); shift its timestamp back.
            try:
                timestamp = timestamp + (received_at - sent_at)
            except OverflowError:
                raise ItemRejected(
                    "sent_at: the clock-skew correction takes timestamp out of range"
                ) from None
        if timestamp - received_at > MAX_FUTURE:
            raise ItemRejected("timestamp: more than 24 h in the future, even after clock-skew correction")
        context = item.context
        if origin.ip and "ip" not in context:
            context = {**context, "ip": origin.ip}
        if origin.user_agent and "user_agent" not in context:
            context = {**context, "user_agent": origin.user_agent}
        return Row(
            organization_id=org_id,
            message_id=message_id,
            event=item.event,
            user_id=item.user_id,
            anonymous_id=item.anonymous_id,
            timestamp=timestamp.astimezone(UTC),
            sent_at=sent_at,
            properties=_json(item.properties, "properties"),
            context=_json(context, "context"),
        )
    except ItemRejected as exc:
        exc.message_id = exc.message_id or item.message_id
        raise


def _as_is(encoded: Any) -> str:
    """Properties and context are JSON already (encoded and checked in :func:`prepare`)."""
    return encoded  # type: ignore[no-any-return]


async def _store(session: AsyncSession, rows: list[Row], received_at: datetime) -> int:
    """Claim the keys (the dedupe), then COPY the rows whose keys were new, in the session's transaction.

    This runs on the session's own psycopg connection: one round trip for the keys, one binary COPY
    for the rows, instead of a parameterized INSERT per row.
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    pg: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    if len(rows) <= SMALL_BATCH:
        async with pg.cursor() as cur:
            await cur.execute(
                INSERT_SMALL,
                (
                    EXPORT_FENCE_LOCK,
                    [r.organization_id for r in rows], [r.message_id for r in rows], [r.event for r in rows],
                    [r.user_id for r in rows], [r.anonymous_id for r in rows], [r.timestamp for r in rows],
                    [r.sent_at for r in rows], [r.properties for r in rows], [r.context for r in rows],
                    received_at, received_at,
                ),
            )  # fmt: skip
            return cur.rowcount
    async with pg.cursor(binary=True) as cur:
        await cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (EXPORT_FENCE_LOCK,))
        await cur.execute(
            CLAIM_KEYS, (received_at, [r.organization_id for r in rows], [r.message_id for r in rows])
        )
        fresh = set(await cur.fetchall())
        if not fresh:
            return 0
        async with cur.copy(COPY_EVENTS) as copy:
            copy.set_types(COPY_TYPES)
            for r in rows:
                if (r.organization_id, r.message_id) in fresh:
                    properties, context = Jsonb(r.properties, dumps=_as_is), Jsonb(r.context, dumps=_as_is)
                    await copy.write_row(
                        (r.organization_id, r.message_id, r.event, r.user_id, r.anonymous_id, r.timestamp,
                         r.sent_at, received_at, properties, context)
                    )  # fmt: skip
    return len(fresh)


class PartitionKeeper:
    """Knows which day partitions exist, so the ingest path asks Postgres only for a new day."""

    def __init__(self) -> None:
        self.known: set[date] = set()

    async def ensure(self, conn: AsyncConnection | AsyncSession, day: date, days: int = 1) -> None:
        wanted = {day + timedelta(days=i) for i in range(days)}
        if wanted <= self.known:
            return
        await conn.execute(text("SELECT keel_ensure_event_partitions(:d, :n)"), {"d": day, "n": days})
        self.known |= wanted


async def keep_event_partitions(engine: AsyncEngine, keeper: PartitionKeeper, every: float = 3600) -> None:
    """Background upkeep: partitions for today and the week ahead exist before they are needed."""
    while True:
        try:
            async with engine.begin() as conn:
                keeper.known.clear()
                await keeper.ensure(conn, datetime.now(UTC).date(), PARTITION_DAYS_AHEAD)
        except Exception:
            log.warning("could not create event partitions ahead", exc_info=True)
        await asyncio.sleep(every)


async def _live_orgs(session: AsyncSession, org_ids: set[uuid.UUID]) -> dict[uuid.UUID, OrgStatus]:
    rows = await session.execute(
        select(Organization.id, Organization.status).where(
            Organization.id.in_(org_ids), Organization.deleted_at.is_(None)
        )
    )
    return {org_id: status for org_id, status in rows.all()}


async def ingest(
    session: AsyncSession,
    raws: list[bytes] | list[msgspec.Raw],
    *,
    principal: Principal,
    partitions: PartitionKeeper,
    origin: Origin,
    batch_sent_at: datetime | None = None,
    received_at: datetime | None = None,
) -> IngestResult:
    """Store the valid events of one batch in the session's transaction; count and explain the rest."""
    received_at = received_at or datetime.now(UTC)
    rejected: list[Rejection] = []
    rows: list[tuple[int, Row]] = []
    for index, raw in enumerate(raws):
        try:
            rows.append(
                (index, prepare(raw, principal=principal, received_at=received_at,
                                batch_sent_at=batch_sent_at, origin=origin))
            )  # fmt: skip
        except ItemRejected as exc:
            rejected.append(Rejection(index=index, message_id=exc.message_id, error=exc.error))

    if principal.kind is TokenKind.platform_ingest and rows:
        live = await _live_orgs(session, {row.organization_id for _, row in rows})
        kept = []
        for index, row in rows:
            status = live.get(row.organization_id)
            if status is None:
                rejected.append(Rejection(index, row.message_id, "org_id: no such organization"))
            elif status is OrgStatus.suspended:
                rejected.append(Rejection(index, row.message_id, "org_id: the organization is suspended"))
            else:
                kept.append((index, row))
        rows = kept

    # The same key twice in one batch: the first one counts, the rest are duplicates.
    seen: set[tuple[uuid.UUID, str]] = set()
    unique: list[Row] = []
    for _, row in rows:
        key = (row.organization_id, row.message_id)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    inserted = 0
    if unique:
        await partitions.ensure(session, received_at.astimezone(UTC).date())
        inserted = await _store(session, unique, received_at)
    rejected.sort(key=lambda r: r.index)
    metrics.EVENTS_ACCEPTED.inc(inserted)
    metrics.EVENTS_DUPLICATES.inc(len(rows) - inserted)
    metrics.EVENTS_REJECTED.inc(len(rejected))
    return IngestResult(accepted=inserted, duplicates=len(rows) - inserted, rejected=rejected)
