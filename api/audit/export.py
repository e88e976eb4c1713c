"""Export a chain as JSON Lines or CSV, a chunk at a time, each entry with its seq and hashes.

A line carries every hashed field as ``api.audit.chain`` hashes it, so an auditor can recompute
each hash offline (``docs/audit.md``). In CSV, an empty cell is null (Keel never stores an empty
string in those columns) and ``metadata``/``targets`` are JSON text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from api.audit.rows import COLUMNS, as_entry, stream_rows
from api.audit.schemas import ExportFormat

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
) -> AsyncIterator[tuple[bytes, int]]:
    """``(bytes, entries)`` pieces of the export, oldest entry first."""
    encode = _jsonl if fmt is ExportFormat.jsonl else _csv
    if fmt is ExportFormat.csv:
        yield (",".join(COLUMNS) + "\n").encode(), 0
    where, params = export_filter(chain_key, since, until)
    async for chunk in stream_rows(conn, where, params):
        yield encode(chunk), len(chunk)
