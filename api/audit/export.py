"""Export a chain as JSON Lines or CSV, a chunk at a time, each entry with its seq and hashes.

A line carries every hashed field as ``api.audit.chain`` hashes it, so an auditor can recompute
each hash offline (``docs/audit.md``). In CSV, an empty cell is null (Keel never stores an empty
string in those columns) and ``metadata``/``targets`` are JSON text.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.audit.rows import COLUMNS, as_entry, stream_rows
from api.audit.schemas import ExportFormat
from api.auth.context import Actor

MEDIA_TYPES = {ExportFormat.jsonl: "application/x-ndjson", ExportFormat.csv: "text/csv; charset=utf-8"}
JSON_COLUMNS = ("targets", "metadata")
_encoder = msgspec.json.Encoder()


def export_filter(
    chain_key: str, since: datetime | None, until: datetime | None
) -> tuple[str, dict[str, Any]]:
    where = "chain_key = %(chain_key)s"
    params: dict[str, Any] = {"chain_key": chain_key}
    if since is not None:
        where += " AND occurred_at >= %(since)s"
        params["since"] = since
    if until is not None:
        where += " AND occurred_at < %(until)s"
        params["until"] = until
    return where, params


def _jsonl(chunk: Sequence[Sequence[Any]]) -> bytes:
    lines = []
    for row in chunk:
        entry = as_entry(row, parse_json=False)
        for name in JSON_COLUMNS:  # already JSON text from Postgres: embed it as it is
            entry[name] = msgspec.Raw(entry[name].encode())
        lines.append(_encoder.encode(entry))
    lines.append(b"")
    return b"\n".join(lines)


def _csv(chunk: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in chunk:
        entry = as_entry(row, parse_json=False)
        writer.writerow(["" if entry[name] is None else entry[name] for name in COLUMNS])
    return buffer.getvalue().encode()


async def export_chunks(
    conn: AsyncConnection,
    *,
    chain_key: str,
    fmt: ExportFormat,
    since: datetime | None = None,
    until: datetime | None = None,
    checkpoints: bool = False,
) -> AsyncIterator[tuple[bytes, int]]:
    """``(bytes, entries)`` pieces of the export, oldest entry first; with ``checkpoints`` (JSON Lines
    only), the chain's signed checkpoints follow the entries, one ``{"checkpoint": {…}}`` line each."""
    encode = _jsonl if fmt is ExportFormat.jsonl else _csv
    if fmt is ExportFormat.csv:
        yield (",".join(COLUMNS) + "\n").encode(), 0
    where, params = export_filter(chain_key, since, until)
    async for chunk in stream_rows(conn, where, params):
        yield encode(chunk), len(chunk)
    if checkpoints and fmt is ExportFormat.jsonl:
        yield await checkpoint_lines(conn, chain_key), 0


async def checkpoint_lines(conn: AsyncConnection, chain_key: str) -> bytes:
    """The chain's signed checkpoints (api/audit/checkpoints.py) as export lines, oldest first."""
    rows = await conn.execute(
        text(
            "SELECT seq, hash, entries, kid, signed_at, jws FROM audit_signed_checkpoints"
            " WHERE chain_key = :k ORDER BY seq"
        ),
        {"k": chain_key},
    )
    return b"".join(_encoder.encode({"checkpoint": dict(row._mapping)}) + b"\n" for row in rows)


async def export_organization(
    engine: AsyncEngine,
    out: Path,
    *,
    organization_id: uuid.UUID,
    fmt: ExportFormat,
    actor: Actor,
    since: datetime | None = None,
    until: datetime | None = None,
    checkpoints: bool = False,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Export one organization's chain to the file ``out``, outside the API's roles (``keel audit
    export``): the org's own log records that it happened (committed before the walk), then the
    file is written from one snapshot. Raises NotFound for an unknown organization. Returns
    how many entries were written."""
    from api.audit.rows import count_rows, snapshot
    from api.audit.services import chain_key_of, record
    from api.db.engine import make_sessionmaker
    from api.errors import NotFound
    from api.orgs.models import Organization

    async with make_sessionmaker(engine)() as session, session.begin():
        if await session.get(Organization, organization_id) is None:
            raise NotFound(f"organization {organization_id} not found")
        await record(
            session, action="audit_log.exported", actor=actor, ctx=None,
            organization_id=organization_id, resource_type="audit_log", resource_id=organization_id,
            metadata={"format": fmt.value, "since": _iso(since), "until": _iso(until)},
        )  # fmt: skip
    chain_key = chain_key_of(organization_id)
    written = 0
    async with snapshot(engine) as conn:
        with out.open("wb") as sink:
            if on_total is not None:
                where, params = export_filter(chain_key, since, until)
                on_total(await count_rows(conn, where, params))
            chunks = export_chunks(
                conn, chain_key=chain_key, fmt=fmt, since=since, until=until, checkpoints=checkpoints
            )
            async for piece, entries in chunks:
                sink.write(piece)
                written += entries
                if progress is not None:
                    progress(entries)
    return written


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
