"""Incremental, idempotent export of append-only tables to the lake, and snapshots of small tables.

Each append-only table has a sequence-numbered column. An export run:
1. reads its watermark from ``_state/<table>.json`` in the lake (0 at first);
2. deletes files a crashed run left past the watermark (their names carry the range they hold);
3. takes the export fence (see ``api.db.fence``) to learn a high-water mark with nothing
   uncommitted below it;
4. streams the rows in (watermark, high] in ranges of ``chunk_rows`` sequence numbers with
   ``COPY ... TO STDOUT (FORMAT csv)``, parses each range with pyarrow, writes one Parquet file per
   date partition (temporary name, then rename), and only then moves the watermark.
A re-run, a crash mid-run or a retried range never loses or duplicates a row; the warehouse's
staging views also dedupe by key, as a second line of defence.
"""

from __future__ import annotations

import io
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from api.db.engine import libpq_url
from api.db.fence import EXPORT_FENCE_LOCK
from pipelines.lake import Lake

Progress = Callable[[int, int], None]  # (rows done, rows expected)
STATE_DIR = "_state"
FILE_NAME = re.compile(r"-(?P<lo>\d{20})-(?P<hi>\d{20})\.parquet$")

TYPES = {"int": pa.int64(), "text": pa.string(), "ts": pa.timestamp("us", tz="UTC"), "bool": pa.bool_()}


def columns(spec: str) -> pa.Schema:
    """``"name type, ..."`` (types: int, text, ts, bool) as an Arrow schema."""
    return pa.schema([(name, TYPES[kind]) for name, kind in (part.split() for part in spec.split(","))])


@dataclass(frozen=True)
class AppendOnlyTable:
    """How one append-only table leaves Postgres."""

    name: str
    sequence: str
    seq_column: str
    #: SELECT list producing CSV-friendly text, in the order of ``schema``.
    select: str
    source: str
    schema: pa.Schema
    #: Column whose UTC date is the Hive partition (``date=YYYY-MM-DD``).
    date_column: str
    key: tuple[str, ...]


EVENTS = AppendOnlyTable(
    name="events",
    sequence="events_ingest_seq",
    seq_column="ingest_seq",
    source="events",
    select="ingest_seq, organization_id, message_id, event, user_id, anonymous_id, timestamp, sent_at,"
    " received_at, properties::text, context::text",
    schema=columns(
        "ingest_seq int, organization_id text, message_id text, event text, user_id text, anonymous_id text,"
        " timestamp ts, sent_at ts, received_at ts, properties text, context text"
    ),
    date_column="timestamp",
    key=("organization_id", "message_id"),
)

AUDIT_LOG = AppendOnlyTable(
    name="audit_log",
    sequence="audit_log_export_seq",
    seq_column="export_seq",
    source="audit_log",
    select="export_seq, id, organization_id, chain_key, seq, occurred_at, recorded_at, actor_type, actor_id,"
    " actor_name, action, resource_type, resource_id, metadata::text, host(ip), user_agent, request_id,"
    " prev_hash, hash, source, targets::text",
    schema=columns(
        "export_seq int, id text, organization_id text, chain_key text, seq int, occurred_at ts,"
        " recorded_at ts, actor_type text, actor_id text, actor_name text, action text, resource_type text,"
        " resource_id text, metadata text, ip text, user_agent text, request_id text, prev_hash text,"
        " hash text, source text, targets text"
    ),
    date_column="occurred_at",
    key=("id",),
)

BILLING_DISCREPANCIES = AppendOnlyTable(
    name="billing_discrepancies",
    sequence="billing_discrepancies_export_seq",
    seq_column="export_seq",
    source="billing_discrepancies",
    select="export_seq, id, run_id, detected_at, kind, severity, organization_id, stripe_customer_id,"
    " stripe_subscription_id, expected, actual, detail, repaired::text",
    schema=columns(
        "export_seq int, id text, run_id text, detected_at ts, kind text, severity text,"
        " organization_id text, stripe_customer_id text, stripe_subscription_id text, expected text,"
        " actual text, detail text, repaired bool"
    ),
    date_column="detected_at",
    key=("id",),
)

APPEND_ONLY = {t.name: t for t in (EVENTS, AUDIT_LOG, BILLING_DISCREPANCIES)}


@dataclass(frozen=True)
class Snapshot:
    """A small table copied whole once a day (the latest copy of the day wins)."""

    name: str
    query: str
    schema: pa.Schema


SNAPSHOTS = {
    s.name: s
    for s in (
        Snapshot(
            "organizations",
            "SELECT id, name, slug, status, stripe_customer_id, created_at, updated_at, deleted_at"
            " FROM organizations",
            columns(
                "id text, name text, slug text, status text, stripe_customer_id text, created_at ts, "
                "updated_at ts, deleted_at ts"
            ),
        ),
        Snapshot(
            "memberships",
            "SELECT id, organization_id, user_id, role, status, created_at, updated_at FROM memberships",
            columns(
                "id text, organization_id text, user_id text, role text, status text, created_at ts,"
                " updated_at ts"
            ),
        ),
        # The billing mirror, whole: small (one row per subscription) and updated in place.
        Snapshot(
            "subscriptions",
            "SELECT id, organization_id, stripe_subscription_id, stripe_customer_id, stripe_price_id,"
            " stripe_product_id, plan, status, seats, unit_amount, currency, interval, current_period_start,"
            " current_period_end, trial_end, cancel_at_period_end::text, canceled_at, stripe_state_at,"
            " synced_at, created_at, updated_at FROM subscriptions",
            columns(
                "id text, organization_id text, stripe_subscription_id text, stripe_customer_id text,"
                " stripe_price_id text, stripe_product_id text, plan text, status text, seats int,"
                " unit_amount int, currency text, interval text, current_period_start ts,"
                " current_period_end ts, trial_end ts, cancel_at_period_end bool, canceled_at ts,"
                " stripe_state_at ts, synced_at ts, created_at ts, updated_at ts"
            ),
        ),
    )
}


@dataclass
class ExportResult:
    table: str
    rows: int = 0
    files: list[str] = field(default_factory=list)
    watermark_from: int = 0
    watermark_to: int = 0
    seconds: float = 0.0


def _state_path(lake: Lake, table: str) -> str:
    return lake.path(STATE_DIR, f"{table}.json")


def read_watermark(lake: Lake, table: str) -> int:
    state = lake.read_json(_state_path(lake, table))
    return int(state["watermark"]) if state else 0


def _write_watermark(lake: Lake, table: str, watermark: int, rows: int) -> None:
    lake.write_json(
        _state_path(lake, table),
        {"watermark": watermark, "rows_last_run": rows, "updated_at": datetime.now(UTC).isoformat()},
    )


def high_water_mark(conn: psycopg.Connection, sequence: str) -> int:
    """The largest number below which every row of ``sequence``'s table is settled (api.db.fence)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EXPORT_FENCE_LOCK,))
        last_value, is_called = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()  # type: ignore[misc]
    return int(last_value) if is_called else 0


def remove_orphans(lake: Lake, table: str, watermark: int) -> list[str]:
    """Files written past the watermark by a run that crashed before moving it."""
    removed = []
    for path in lake.list_files(table):
        match = FILE_NAME.search(path)
        if match and int(match.group("hi")) > watermark:
            lake.delete(path)
            removed.append(path)
    return removed


def _copy_csv(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> tuple[bytes, int]:
    buffer = io.BytesIO()
    rows = 0
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT csv)", params) as copy:
        for data in copy:
            buffer.write(data)
            rows += 1
    return buffer.getvalue(), rows


def _parse(data: bytes, schema: pa.Schema) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=schema.names, block_size=16 << 20),
        convert_options=pacsv.ConvertOptions(
            column_types=schema, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )


def export_table(
    database_url: str,
    lake: Lake,
    table: AppendOnlyTable,
    *,
    chunk_rows: int = 250_000,
    progress: Progress | None = None,
    stop_after_chunks: int | None = None,
) -> ExportResult:
    """Export the rows of ``table`` the lake does not hold yet. Safe to re-run at any point."""
    started = time.perf_counter()
    watermark = read_watermark(lake, table.name)
    result = ExportResult(table=table.name, watermark_from=watermark, watermark_to=watermark)
    remove_orphans(lake, table.name, watermark)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        high = high_water_mark(conn, table.sequence)
        expected = max(high - watermark, 0)
        lo, chunks = watermark, 0
        while lo < high:
            hi = min(lo + chunk_rows, high)
            data, rows = _copy_csv(
                conn,
                f"SELECT {table.select} FROM {table.source}"
                f" WHERE {table.seq_column} > %s AND {table.seq_column} <= %s",
                (lo, hi),
            )
            if rows:
                result.files += write_partitioned(lake, table, _parse(data, table.schema), lo, hi)
            result.rows += rows
            _write_watermark(lake, table.name, hi, result.rows)
            result.watermark_to = lo = hi
            chunks += 1
            if progress:
                progress(lo - watermark, expected)
            if stop_after_chunks is not None and chunks >= stop_after_chunks:
                break
    result.seconds = time.perf_counter() - started
    return result


def write_partitioned(lake: Lake, table: AppendOnlyTable, rows: pa.Table, lo: int, hi: int) -> list[str]:
    """One file per date partition for the sequence range (lo, hi]; the name makes re-runs idempotent."""
    frame = pl.from_arrow(rows)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(pl.col(table.date_column).dt.date().alias("_date"))
    written = []
    for (day,), part in frame.partition_by("_date", as_dict=True, maintain_order=True).items():
        path = lake.path(table.name, f"date={day}", f"{table.name}-{lo:020d}-{hi:020d}.parquet")
        lake.write_parquet(part.drop("_date").to_arrow(), path)
        written.append(path)
    return written


def export_snapshot(
    database_url: str, lake: Lake, snapshot: Snapshot, *, day: str | None = None
) -> ExportResult:
    """Copy a small table whole into ``<name>/snapshot_date=<day>/<name>.parquet``."""
    started = time.perf_counter()
    day = day or datetime.now(UTC).date().isoformat()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        data, rows = _copy_csv(conn, snapshot.query)
    path = lake.path(snapshot.name, f"snapshot_date={day}", f"{snapshot.name}.parquet")
    table = _parse(data, snapshot.schema) if rows else snapshot.schema.empty_table()
    lake.write_parquet(table, path)
    return ExportResult(table=snapshot.name, rows=rows, files=[path], seconds=time.perf_counter() - started)


def lake_keys(lake: Lake, table: AppendOnlyTable) -> pl.DataFrame:
    """Every key the lake holds for ``table`` (duplicates included): for checks and tests."""
    files = lake.list_files(table.name)
    if not files:
        return pl.DataFrame(schema={k: pl.String for k in table.key})
    frames = [pl.DataFrame(lake_read(lake, path, list(table.key))) for path in files]
    return pl.concat(frames)


def lake_read(lake: Lake, path: str, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    with lake.fs.open_input_file(path) as source:
        return pq.read_table(source, columns=columns)


def partition_of(path: str) -> str:
    return posixpath.basename(posixpath.dirname(path))


def write_schemas(lake: Lake) -> None:
    """An empty file per table with its schema, so the warehouse can be built before any data."""
    for name, schema in [(t.name, t.schema) for t in APPEND_ONLY.values()] + [
        (s.name, s.schema) for s in SNAPSHOTS.values()
    ]:
        path = lake.path("_schema", f"{name}.parquet")
        if not lake.exists(path):
            lake.write_parquet(schema.empty_table(), path)
