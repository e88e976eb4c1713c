"""Reading audit entries back exactly as they were hashed, streamed from a server-side cursor.

``verify`` and ``export`` both read through here, in one read-only REPEATABLE READ transaction
(a consistent snapshot while writers keep appending), a chunk of rows at a time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.audit.services import normalize_ip

CHUNK_ROWS = 2000

# Text casts keep per-row work small and the values exactly what the hash saw: uuids as their
# canonical text, JSONB as its text (parsed once here), INET through host() and normalize_ip.
COLUMNS = (
    "chain_key",
    "seq",
    "id",
    "organization_id",
    "occurred_at",
    "recorded_at",
    "source",
    "action",
    "actor_type",
    "actor_id",
    "actor_name",
    "resource_type",
    "resource_id",
    "targets",
    "metadata",
    "ip",
    "user_agent",
    "request_id",
    "prev_hash",
    "hash",
)
SELECT_ENTRIES = """
SELECT chain_key, seq, id::text, organization_id::text, occurred_at, recorded_at, source, action,
       actor_type, actor_id, actor_name, resource_type, resource_id, targets::text, metadata::text,
       host(ip), user_agent, request_id, prev_hash, hash
FROM audit_log
"""


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def as_entry(row: Sequence[Any], *, parse_json: bool = True) -> dict[str, Any]:
    """One row as the mapping ``api.audit.chain`` hashes (and the export writes)."""
    entry = dict(zip(COLUMNS, row, strict=True))
    entry["occurred_at"] = iso(entry["occurred_at"])
    entry["recorded_at"] = iso(entry["recorded_at"])
    entry["ip"] = normalize_ip(entry["ip"])
    if parse_json:
        entry["metadata"] = json.loads(entry["metadata"])
        entry["targets"] = json.loads(entry["targets"])
    return entry


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in one read-only REPEATABLE READ transaction: every read sees the same moment."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        async with conn.begin():
            yield conn


async def stream_rows(
    conn: AsyncConnection, where: str, params: dict[str, Any], *, order: str = "seq"
) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """Chunks of raw rows ``WHERE <where> ORDER BY <order>`` through a server-side cursor."""
    result = await conn.stream(
        text(f"{SELECT_ENTRIES} WHERE {where} ORDER BY {order}").bindparams(**params),
        execution_options={"yield_per": CHUNK_ROWS},
    )
    async for chunk in result.partitions(CHUNK_ROWS):
        yield chunk
