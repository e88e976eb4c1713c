"""Writing events: one statement per batch claims the keys (the dedupe) and inserts the new rows.

The rows travel as one JSONB array parameter: msgspec encodes it in C, Postgres parses it once
(properties and context arrive as JSONB values, parsed with the rest), and nothing comes back but
a row count. Earlier designs cost the API process more than Postgres: a ``RETURNING`` of every
claimed key (UUIDs built and hashed in Python), then a binary ``COPY`` row by row.

The statement runs in the caller's transaction when there is one (a session's connection), or as
its own transaction on an autocommit connection, where the answer arrives only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncSession

from api.db.fence import EXPORT_FENCE_LOCK

log = logging.getLogger("keel.events")
PARTITION_DAYS_AHEAD = 7

PgConnection = psycopg.AsyncConnection[Any]


class EventRow(msgspec.Struct, array_like=True, gc=False):
    """One valid event, in column order; properties and context are JSON already (checked)."""

    organization_id: uuid.UUID
    message_id: str
    event: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    sent_at: datetime | None
    properties: msgspec.Raw
    context: msgspec.Raw


_encode_rows = msgspec.json.Encoder().encode

# The fence is taken before any number is drawn: every row reaching the events insert comes
# through ``fresh``, which reads ``fence`` first (see api/db/fence.py).
INSERT_EVENTS = """
WITH fence AS (SELECT pg_advisory_xact_lock_shared(%(fence)s) AS held),
incoming AS (
    SELECT (e->>0)::uuid AS organization_id, e->>1 AS message_id, e->>2 AS event, e->>3 AS user_id,
           e->>4 AS anonymous_id, (e->>5)::timestamptz AS ts, (e->>6)::timestamptz AS sent_at,
           e->7 AS properties, e->8 AS context, n
    FROM jsonb_array_elements(%(rows)s) WITH ORDINALITY AS t(e, n)
),
fresh AS (
    INSERT INTO event_keys (organization_id, message_id, received_at)
    SELECT i.organization_id, i.message_id, %(received_at)s FROM incoming i, fence
    ON CONFLICT DO NOTHING
    RETURNING organization_id, message_id
)
INSERT INTO events (organization_id, message_id, event, user_id, anonymous_id, timestamp, sent_at,
                    received_at, properties, context)
SELECT i.organization_id, i.message_id, i.event, i.user_id, i.anonymous_id, i.ts, i.sent_at,
       %(received_at)s, i.properties, i.context
FROM incoming i JOIN fresh f ON f.organization_id = i.organization_id AND f.message_id = i.message_id
ORDER BY i.n
"""


def _as_is(encoded: Any) -> Any:
    return encoded


async def store(conn: PgConnection, rows: list[EventRow], received_at: datetime) -> int:
    """Store the rows whose (organization, message_id) is new; returns how many were stored.

    ``rows`` must not repeat a key (the caller keeps the first of each)."""
    params = {
        "fence": EXPORT_FENCE_LOCK,
        "rows": Jsonb(_encode_rows(rows), dumps=_as_is),
        "received_at": received_at,
    }
    async with conn.cursor() as cur:
        await cur.execute(INSERT_EVENTS, params)
        return cur.rowcount


async def session_connection(session: AsyncSession) -> PgConnection:
    """The psycopg connection under a session, inside the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    pg: PgConnection = raw.driver_connection  # type: ignore[assignment]
    return pg


def make_ingest_pool(conninfo: str, *, max_size: int = 10) -> AsyncConnectionPool[PgConnection]:
    """Autocommit connections for the ingest path: one statement is one transaction, one round trip.

    Not opened; the app's lifespan opens and closes it."""
    return AsyncConnectionPool(
        conninfo,
        min_size=2,
        max_size=max_size,
        kwargs={"autocommit": True},
        open=False,
        name="keel-ingest",
    )


class PartitionKeeper:
    """Knows which day partitions exist, so the ingest path asks Postgres only for a new day."""

    def __init__(self) -> None:
        self.known: set[date] = set()

    async def ensure(self, conn: PgConnection, day: date, days: int = 1) -> None:
        wanted = {day + timedelta(days=i) for i in range(days)}
        if wanted <= self.known:
            return
        await conn.execute("SELECT keel_ensure_event_partitions(%s, %s)", (day, days))
        self.known |= wanted


async def keep_event_partitions(
    pool: AsyncConnectionPool[PgConnection], keeper: PartitionKeeper, every: float = 3600
) -> None:
    """Background upkeep: partitions for today and the week ahead exist before they are needed."""
    while True:
        try:
            async with pool.connection() as conn:
                keeper.known.clear()
                await keeper.ensure(conn, datetime.now(UTC).date(), PARTITION_DAYS_AHEAD)
        except Exception:
            log.warning("could not create event partitions ahead", exc_info=True)
        await asyncio.sleep(every)
