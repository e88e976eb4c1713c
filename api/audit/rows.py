"""Reading audit entries back exactly as they were hashed, streamed from a server-side cursor.

``verify`` and ``export`` both read through here, in one read-only REPEATABLE READ transaction
(a consistent snapshot while writers keep appending), a chunk of rows at a time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, cast

import msgspec
import psycopg
from psycopg import sql

from api.audit.chain import CANONICAL_FIELDS, normalize_ip

if TYPE_CHECKING:  # (annotations only: a process checking a range of a chain loads no SQLAlchemy)
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

CHUNK_ROWS = 2000
_decode = msgspec.json.Decoder().decode

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
#: ``occurred_at`` spelled as the hash spells it (``iso``: UTC, microseconds, ``+00:00``), by
#: Postgres: no timestamp to parse and format per entry in Python.
OCCURRED_AT_AS_HASHED = """to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
#: How ``verify`` reads each field the hash covers, where the column alone is not the hashed value.
#: ``metadata`` and ``targets`` arrive as one JSON text, ``[metadata, targets]``: one column and
#: one parse fewer per entry (``targets`` has no column of its own in the walk's rows).
_AS_HASHED = {
    "id": "id::text",
    "organization_id": "organization_id::text",
    "occurred_at": OCCURRED_AT_AS_HASHED,
    "metadata": "'[' || COALESCE(metadata::text, 'null') || ',' || COALESCE(targets::text, 'null') || ']'",
    "ip": "host(ip)",
}
_WALK_FIELDS = tuple(name for name in CANONICAL_FIELDS if name != "targets")
#: What ``verify`` reads: the values ``api.audit.chain.canonical_values`` takes, in its order (but
#: ``targets``, read with ``metadata``), then ``prev_hash`` and ``hash``. A row needs no mapping,
#: only its JSON text parsed and its address spelled as Python does (:func:`walk_values`).
SELECT_FOR_WALK = (
    f"SELECT {', '.join(_AS_HASHED.get(name, name) for name in _WALK_FIELDS)}, prev_hash, hash FROM audit_log"
)
WALK_SEQ = _WALK_FIELDS.index("seq")
WALK_PREV_HASH = len(_WALK_FIELDS)
WALK_HASH = WALK_PREV_HASH + 1
_WALK_METADATA = _WALK_FIELDS.index("metadata")
_WALK_TARGETS = CANONICAL_FIELDS.index("targets")
_WALK_IP = _WALK_FIELDS.index("ip")
if len(_WALK_FIELDS) != _WALK_TARGETS:  # walk_values puts targets back after the other values
    raise ImportError("api.audit.rows expects targets last of CANONICAL_FIELDS")


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def loads(text: str) -> Any:
    """JSON text to Python values, as ``json.loads`` gives them (msgspec is the fast path)."""
    try:
        return _decode(text)
    except msgspec.DecodeError:  # e.g. an integer past 64 bits in a doctored row
        return json.loads(text)


def as_entry(row: Sequence[Any], *, parse_json: bool = True) -> dict[str, Any]:
    """One row as the mapping ``api.audit.chain`` hashes (and the export writes)."""
    entry = dict(zip(COLUMNS, row, strict=True))
    if type(entry["occurred_at"]) is not str:  # (SELECT_FOR_HASH hands it over as text already)
        entry["occurred_at"] = iso(entry["occurred_at"])
    entry["ip"] = normalize_ip(entry["ip"])
    if parse_json:
        entry["metadata"] = loads(entry["metadata"])
        entry["targets"] = loads(entry["targets"])
    else:  # the export shows it; verify does not need it
        entry["recorded_at"] = iso(entry["recorded_at"])
    return entry


def walk_values(row: Sequence[Any]) -> list[Any]:
    """A ``SELECT_FOR_WALK`` row's values as ``api.audit.chain.canonical_values`` takes them."""
    values = list(row)  # (prev_hash and hash ride along at the end: canonical_values reads no further)
    values[_WALK_METADATA], targets = loads(values[_WALK_METADATA])
    values.insert(_WALK_TARGETS, targets)
    ip = values[_WALK_IP]
    if ip is not None and ":" in ip:  # (host() spells IPv4 as Python does: only IPv6 can differ)
        values[_WALK_IP] = normalize_ip(ip)
    return values


def walk_entry(row: Sequence[Any]) -> dict[str, Any]:
    """A ``SELECT_FOR_WALK`` row as the mapping ``api.audit.chain.entry_hash`` takes (and
    ``verify``'s checks name), with its ``prev_hash`` and ``hash``."""
    entry = dict(zip(CANONICAL_FIELDS, walk_values(row), strict=False))  # (not prev_hash, hash)
    entry["prev_hash"], entry["hash"] = row[WALK_PREV_HASH], row[WALK_HASH]
    return entry


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in one read-only REPEATABLE READ transaction: every read sees the same moment."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        async with conn.begin():
            yield conn


async def stream_rows(
    conn: AsyncConnection,
    where: str,
    params: dict[str, Any],
    *,
    order: str = "seq",
    select: str = SELECT_ENTRIES,
) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """Chunks of raw rows ``WHERE <where> ORDER BY <order>`` (psycopg ``%(name)s`` parameters).

    A named (server-side) cursor on the connection's own driver, in its transaction: rows arrive
    CHUNK_ROWS per round trip, without building an object per row in between.
    """
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    async with driver.cursor(name="keel_audit_rows") as cursor:
        await cursor.execute(f"{select} WHERE {where} ORDER BY {order}", params)
        while chunk := await cursor.fetchmany(CHUNK_ROWS):
            yield chunk


#: Rows a chunked stream receives per result (libpq 17's chunked rows mode; one row at a time before).
_STREAM_SIZE = CHUNK_ROWS if psycopg.pq.version() >= 170000 else 1


class SnapshotReader:
    """A blocking psycopg connection that reads in the snapshot another transaction exported
    (``pg_export_snapshot()``), for a worker thread: ``verify`` reads and hashes there.

    Why not the async connection: psycopg's asyncio wait goes through the event loop once per
    16 kB libpq reads (an ``add_reader``, a future and a timer each time), about 0.5-1 µs of CPU
    per row of the walk; the blocking wait is a ``poll`` in C. And a chunked stream (one statement
    whose rows Postgres keeps sending while Python hashes, up to the socket's buffer) replaces
    the named cursor's round trip per chunk. Every call of :meth:`chunks` runs in a transaction
    of its own that imports the snapshot, so stopping one early (the stream cancelled) spoils
    nothing for the next. Open it, use it and close it from one thread at a time. ``url`` and
    ``snapshot_id`` stay readable, for processes that open readers of their own in that snapshot.
    """

    def __init__(self, url: str, snapshot_id: str, *, application_name: str = "keel audit verify") -> None:
        self.url = url
        self.snapshot_id = snapshot_id
        self._conn = psycopg.connect(url, application_name=application_name)
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True

    def chunks(
        self, select: str, where: str, params: dict[str, Any]
    ) -> Generator[list[tuple[Any, ...]], None, None]:
        """Lists of up to CHUNK_ROWS raw rows ``<select> WHERE <where> ORDER BY seq``, in the snapshot.
        Close the iterator to stop early."""
        conn = self._conn
        try:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot_id)))
            rows = cast(
                Generator[tuple[Any, ...], None, None],
                conn.cursor().stream(f"{select} WHERE {where} ORDER BY seq", params, size=_STREAM_SIZE),
            )
            try:
                while chunk := list(islice(rows, CHUNK_ROWS)):
                    yield chunk
            finally:
                rows.close()  # (psycopg cancels a statement still sending; the rollback below clears it)
        finally:
            conn.rollback()

    def close(self) -> None:
        self._conn.close()


async def count_rows(conn: AsyncConnection, where: str, params: dict[str, Any]) -> int:
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    async with driver.cursor() as cursor:
        await cursor.execute(f"SELECT count(*) FROM audit_log WHERE {where}", params)
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
