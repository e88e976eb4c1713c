"""Incremental, idempotent export of append-only and versioned tables to the lake, and snapshots
of small tables.

Each append-only table has a sequence-numbered column; each versioned table (updated in place:
organizations, people) a version column that a trigger renumbers on every insert or update
(``warehouse.lake_tables.ByVersion``). Both are exported the same way. An export run:
1. reads its watermark from ``_state/<table>.json`` in the lake (0 at first);
2. deletes files a crashed run left past the watermark (their names carry the range they hold);
3. takes the export fence (see ``api.db.fence``) to learn a high-water mark with nothing
   uncommitted below it;
4. when the backlog spans several ranges, summarizes the page ranges of the sequence column's BRIN
   index that rows were appended to since the last vacuum (an unsummarized range matches every
   query, so each range query would otherwise read the whole unvacuumed tail of the table);
5. reads the rows in (watermark, high] in ranges of ``chunk_rows`` sequence numbers through ADBC
   (Postgres's binary COPY decoded straight into Arrow), writes one Parquet file per range and
   date partition (temporary name, then rename), and only then moves the watermark. A reader
   thread streams Arrow record batches into a bounded queue and the writer encodes them as they
   come, so Postgres, the decoder and the Parquet writer all run at once (bench/bench_pipelines.py
   has the figures and what was measured).
A re-run, a crash mid-run or a retried range never loses or duplicates a row; the warehouse's
staging views also dedupe by key, as a second line of defence.

A versioned table differs in two ways. Its last range has no upper bound: a row changed again
after the fence (its version past the high-water mark) is read in its newest committed state
rather than missed, since the version it had below the mark is gone; the next run reads it once
more (an overlap the staging view merges away by keeping each key's latest version). No change
is ever skipped: a version at or below the mark was drawn under the fence, so its transaction
had committed before the mark was taken. And its files are not partitioned by date (one file
per range). The first complete run holds every row, so it removes what daily snapshots of the
table an older Keel left behind.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from api.db.engine import libpq_url
from api.db.fence import EXPORT_FENCE_LOCK
from pipelines.lake import Lake, LakeFileWriter
from warehouse.lake_tables import LAKE_TABLES, LakeTable

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (rows done, rows expected)
STATE_DIR = "_state"
FILE_NAME = re.compile(r"-(?P<lo>\d{20})-(?P<hi>\d{20})\.parquet$")


@dataclass(frozen=True)
class IncrementalTable:
    """How one append-only or versioned table leaves Postgres (derived from its
    ``warehouse.lake_tables`` entry)."""

    name: str
    #: The Postgres sequence its numbers are drawn from, under the export fence.
    sequence: str
    #: The sequence (or version) column's name, and the same as the range query's WHERE names it.
    seq_column: str
    seq_expr: str
    #: SELECT list producing Arrow-friendly values, in the order of ``schema``.
    select: str
    source: str
    schema: pa.Schema
    #: Column whose UTC date is the Hive partition (``date=YYYY-MM-DD``); None: unpartitioned.
    date_column: str | None
    key: tuple[str, ...]
    #: Low-cardinality columns worth dictionary-encoding in Parquet.
    dictionary: tuple[str, ...] = ()
    #: Updated in place and renumbered on each change (``ByVersion``), not append-only.
    versioned: bool = False
    #: Columns written delta-encoded, and those with min/max statistics (``warehouse.lake_tables``).
    delta: tuple[str, ...] = ()
    statistics: tuple[str, ...] = ()

    @classmethod
    def of(cls, table: LakeTable) -> IncrementalTable:
        numbered = table.incremental
        assert numbered is not None, f"{table.name} is exported as a snapshot"
        return cls(
            name=table.name,
            sequence=numbered.sequence,
            seq_column=numbered.column,
            seq_expr=table.sequence_column,
            select=table.select_list,
            source=table.source,
            schema=table.arrow_schema,
            date_column=table.by_sequence.date_column if table.by_sequence else None,
            key=table.key,
            dictionary=table.dictionary,
            versioned=table.mode == "version",
            delta=table.delta_encoded,
            statistics=table.with_statistics,
        )


@dataclass(frozen=True)
class Snapshot:
    """A small table copied whole once a day (the latest copy of the day wins)."""

    name: str
    query: str
    schema: pa.Schema

    @classmethod
    def of(cls, table: LakeTable) -> Snapshot:
        return cls(name=table.name, query=table.query, schema=table.arrow_schema)


#: Append-only tables, exported by sequence.
APPEND_ONLY = {t.name: IncrementalTable.of(t) for t in LAKE_TABLES.values() if t.mode == "sequence"}
#: Tables updated in place, exported by version (the rows changed since the last export).
VERSIONED = {t.name: IncrementalTable.of(t) for t in LAKE_TABLES.values() if t.mode == "version"}
#: Every table an export run reads incrementally (what the export-lake flow exports one by one).
INCREMENTAL = {**APPEND_ONLY, **VERSIONED}
SNAPSHOTS = {t.name: Snapshot.of(t) for t in LAKE_TABLES.values() if t.mode == "snapshot"}
EVENTS = APPEND_ONLY["events"]
AUDIT_LOG = APPEND_ONLY["audit_log"]
BILLING_DISCREPANCIES = APPEND_ONLY["billing_discrepancies"]
WEBHOOK_ATTEMPTS = APPEND_ONLY["webhook_attempts"]
ORGANIZATIONS = VERSIONED["organizations"]
PEOPLE = VERSIONED["people"]


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


def record_progress(conn: psycopg.Connection, table: str, watermark: int) -> None:
    """Tell Postgres how far the lake holds ``table`` (after the lake's own state says so): audit
    pruning and partition drops, done by the owner's functions, never go past this number.

    Best effort, on the export's autocommit connection: a role that may only read exports all the
    same, and Postgres then lets nothing go that it cannot see exported (the safe direction)."""
    try:
        conn.execute(
            "INSERT INTO export_progress (table_name, watermark, updated_at) VALUES (%s, %s, now())"
            " ON CONFLICT (table_name) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()",
            (table, watermark),
        )
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("cannot record the export of %s in Postgres (nothing will be pruned): %s", table, exc)


def high_water_mark(conn: psycopg.Connection, sequence: str) -> int:
    """The largest number below which every row of ``sequence``'s table is settled (api.db.fence)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EXPORT_FENCE_LOCK,))
        last_value, is_called = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()  # type: ignore[misc]
    return int(last_value) if is_called else 0


#: The BRIN indexes led by ``column`` on ``table`` or, when it is partitioned, on its partitions
#: (a partitioned index holds no summaries itself).
_BRIN_INDEXES = """
SELECT i.indexrelid::regclass::text
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_am am ON am.oid = ic.relam
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE am.amname = 'brin' AND ic.relkind = 'i' AND a.attname = %(column)s
  AND (i.indrelid = %(table)s::regclass
       OR i.indrelid IN (SELECT relid FROM pg_partition_tree(%(table)s::regclass) WHERE isleaf))
"""


def brin_indexes(conn: psycopg.Connection, table: IncrementalTable) -> list[str]:
    """The BRIN indexes on ``table``'s sequence column (one per partition when it is partitioned)."""
    params = {"column": table.seq_column, "table": table.name}
    return sorted(row[0] for row in conn.execute(_BRIN_INDEXES, params))


def summarize_new_ranges(conn: psycopg.Connection, table: IncrementalTable) -> int:
    """Summarize the page ranges of ``table``'s sequence BRIN index that no vacuum has summarized yet.

    A BRIN index answers "maybe" for every unsummarized range, and rows appended since the last
    (auto)vacuum sit in such ranges: without this, each range query of a large backlog reads all
    of them again (10 million fresh events: every 250,000-row range read the whole 2.4 GB
    partition). One pass here makes the export linear. Best effort: it goes through the owner's
    ``keel_summarize_brin`` (``brin_summarize_new_values`` needs the index's owner), and needs a
    primary and the table's maintenance lock within 5 s; without them the export is only slower.
    Returns the ranges summarized.
    """
    summarized = 0
    for index in brin_indexes(conn, table):
        try:
            with conn.transaction():
                # It waits for a vacuum of the same table (which summarizes too); never for long.
                conn.execute("SET LOCAL lock_timeout = '5s'")
                row = conn.execute("SELECT keel_summarize_brin(%s::regclass)", (index,)).fetchone()
        except psycopg.Error as exc:
            log.warning("cannot summarize %s (the export reads more than it needs): %s", index, exc)
            if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                return summarized  # the same for every partition
            continue
        summarized += int(row[0]) if row else 0
    return summarized


def remove_orphans(lake: Lake, table: str, watermark: int) -> list[str]:
    """Files written past the watermark by a run that crashed before moving it, and temporary files
    a killed writer left half-written (readers already skip them; this reclaims the space)."""
    state = posixpath.basename(_state_path(lake, table))
    removed = lake.list_temporary(table) + [
        p for p in lake.list_temporary(STATE_DIR) if posixpath.basename(p).startswith(f".tmp-{state}.")
    ]
    for path in removed:
        lake.delete(path)
    for path in lake.list_files(table):
        match = FILE_NAME.search(path)
        if match and int(match.group("hi")) > watermark:
            lake.delete(path)
            removed.append(path)
    return removed


_formatters = threading.local()


def _uuid_texts(columns: dict[str, pa.Array]) -> pa.Table:
    """uuid columns as Postgres writes them (lowercase hex, 8-4-4-4-12), made from their 16 bytes
    (ADBC's ``arrow.uuid``) by DuckDB in C++, for a fraction of what the server's ``uuid_out`` and
    text copy cost (bench/bench_pipelines.py). One single-threaded in-memory DuckDB per thread."""
    con = getattr(_formatters, "duckdb", None)
    if con is None:
        import duckdb

        con = _formatters.duckdb = duckdb.connect(config={"threads": 1})
    uuids = pa.table(
        {
            name: values
            if isinstance(values.type, pa.BaseExtensionType)
            else pa.ExtensionArray.from_storage(pa.uuid(), values)
            for name, values in columns.items()
        }
    )  # DuckDB reads a bare fixed_size_binary(16) as a BLOB
    select = ", ".join(f'"{name}"::VARCHAR AS "{name}"' for name in columns)
    return con.from_arrow(uuids).select(select).to_arrow_table()


def _is_uuid(values: pa.Array) -> bool:
    kind = values.type
    if isinstance(kind, pa.BaseExtensionType):
        return kind.extension_name == "arrow.uuid"
    return pa.types.is_fixed_size_binary(kind) and kind.byte_width == 16


#: A dictionary of at most this many distinct uuids is formatted in Python (a microsecond each),
#: larger ones by DuckDB (:func:`_uuid_texts`).
_FEW_UUIDS = 4096


def _few_uuid_texts(values: pa.Array) -> pa.Array:
    """The text of a low-cardinality uuid column (one declared ``dictionary``: an organization's id
    on every one of its events): each distinct value formatted once and taken per row, a quarter
    of what formatting every row costs (bench/bench_pipelines.py)."""
    storage = values.storage if isinstance(values.type, pa.BaseExtensionType) else values
    encoded = pc.dictionary_encode(storage)
    distinct = encoded.dictionary
    if len(distinct) > _FEW_UUIDS:
        texts = _uuid_texts({"u": distinct}).column("u").combine_chunks()
    else:
        texts = pa.array([str(uuid.UUID(bytes=b)) for b in distinct.to_pylist()], pa.string())
    return texts.take(encoded.indices)


def to_lake(rows: pa.RecordBatch, schema: pa.Schema, dictionary: Collection[str] = ()) -> pa.RecordBatch:
    """A batch read from Postgres in the lake's schema (the columns of ``schema``, in its order):
    uuids as their text, JSON as jsonb's text (the storage of ADBC's ``arrow.json``). The uuid
    columns named in ``dictionary`` hold few distinct values, formatted once each."""
    arrays = {f.name: rows.column(f.name) for f in schema}
    uuids = {name: values for name, values in arrays.items() if _is_uuid(values)}
    if uuids and rows.num_rows:
        few = {name for name in uuids if name in dictionary}
        arrays.update({name: _few_uuid_texts(uuids[name]) for name in few})
        if many := {name: values for name, values in uuids.items() if name not in few}:
            texts = _uuid_texts(many)
            arrays.update({name: texts.column(name).combine_chunks() for name in many})
    columns = [
        (values.storage if isinstance(values.type, pa.BaseExtensionType) else values).cast(field.type)
        for field, values in zip(schema, arrays.values(), strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _read_arrow(reader: Any, query: str, schema: pa.Schema) -> pa.Table:
    """Run ``query`` through ADBC: Postgres's binary COPY decoded into Arrow in C, no Python per row."""
    with reader.cursor() as cursor:
        cursor.execute(query)
        batches = [to_lake(b, schema) for b in cursor.fetch_record_batch() if b.num_rows]
    return pa.Table.from_batches(batches, schema=schema)


def _range_query(table: IncrementalTable, lo: int, hi: int, *, last: bool = False) -> str:
    # lo and hi are integers Keel computed: inlined, since the reader runs one plain statement.
    if last and table.versioned:
        # Unbounded: a row renumbered past the mark since the fence is read as it is now.
        return f"SELECT {table.select} FROM {table.source} WHERE {table.seq_expr} > {int(lo)}"
    return (
        f"SELECT {table.select} FROM {table.source}"
        f" WHERE {table.seq_expr} > {int(lo)} AND {table.seq_expr} <= {int(hi)}"
    )


def remove_snapshots(lake: Lake, table: IncrementalTable) -> list[str]:
    """Daily snapshot files of a table now exported by version (``snapshot_date=…``, as an older
    Keel wrote them): once a complete run has exported every row, they only repeat old states."""
    removed = [p for p in lake.list_files(table.name) if not FILE_NAME.search(p)]
    for path in removed:
        lake.delete(path)
    return removed


def _open_reader(database_url: str) -> Any:
    import adbc_driver_postgresql.dbapi as adbc

    reader = adbc.connect(libpq_url(database_url))
    with reader.cursor() as cursor:
        # One stream feeds one consumer: parallel workers would only add a tuple queue and take
        # the cores this process needs to decode and write what they produce.
        cursor.execute("SET max_parallel_workers_per_gather = 0")
    return reader


#: Record batches the reader thread may hold ready for the writer, and their size (ADBC's
#: default): the bound of the export's memory beside the row groups being gathered. Larger or
#: smaller batches change nothing measurable in the decoder's CPU (1 to 64 MB).
QUEUE_BATCHES = 4
BATCH_BYTES = 16 << 20
#: Rows gathered per day before they are written as one row group: a day of a range whose rows
#: are fewer is one row group (as every file was before the stream), and a larger one is written
#: as it comes rather than held whole.
ROW_GROUP_ROWS = 262_144
#: Ranges of an append-only table read and written at once, each through its own connection.
LANES = 2


@dataclass(frozen=True)
class _RangeDone:
    """The reader's mark that every row of the range (lo, hi] has been handed over."""

    lo: int
    hi: int


def _hand_over(into: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` into a bounded queue unless ``stop`` is set first (then False)."""
    while not stop.is_set():
        try:
            into.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _take(source: queue.Queue[Any], stop: threading.Event) -> Any:
    """The next item of a queue, or None once ``stop`` is set."""
    while not stop.is_set():
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def _stream_ranges(
    reader: Any,
    table: IncrementalTable,
    ranges: Sequence[tuple[int, int]],
    high: int,
    ready: queue.Queue[pa.RecordBatch | _RangeDone | BaseException],
    stop: threading.Event,
    batch_bytes: int,
) -> None:
    """A reader thread: each range's rows, batch by batch in the lake's schema, then its
    ``_RangeDone``; an error is handed over in their place. Ends early when ``stop`` is set."""
    try:
        for lo, hi in ranges:
            with reader.cursor() as cursor:
                cursor.adbc_statement.set_options(
                    **{"adbc.postgresql.batch_size_hint_bytes": str(batch_bytes)}
                )
                cursor.execute(_range_query(table, lo, hi, last=hi == high))
                for batch in cursor.fetch_record_batch():
                    if batch.num_rows and not _hand_over(
                        ready, to_lake(batch, table.schema, table.dictionary), stop
                    ):
                        return
            if not _hand_over(ready, _RangeDone(lo, hi), stop):
                return
    except BaseException as exc:  # the writer raises it
        _hand_over(ready, exc, stop)


def _write_ranges(
    lake: Lake,
    table: IncrementalTable,
    ranges: Sequence[tuple[int, int]],
    ready: queue.Queue[pa.RecordBatch | _RangeDone | BaseException],
    done: queue.Queue[RangeFiles | BaseException],
    stop: threading.Event,
    row_group_rows: int,
) -> None:
    """A writer thread: the files of each range its reader streams, written and closed under
    temporary names, handed to the export (which renames them in range order); an error is
    handed over in their place. Ends early when ``stop`` is set, leaving nothing behind."""
    files: RangeFiles | None = None
    try:
        for lo, hi in ranges:
            files = RangeFiles(lake, table, lo, hi, row_group_rows)
            while not isinstance(item := _take(ready, stop), _RangeDone):
                if item is None:  # stopped
                    files.abort()
                    return
                if isinstance(item, BaseException):
                    raise item
                files.add(pa.Table.from_batches([item]))
            assert (item.lo, item.hi) == (lo, hi), "the reader and the writer disagree on the range"
            files.seal()
            if not _hand_over(done, files, stop):
                files.abort()
                return
            files = None
    except BaseException as exc:  # the export raises it
        if files is not None:
            files.abort()
        _hand_over(done, exc, stop)


class _Lane:
    """Every ``n``-th range of a run, read through a connection of its own by a reader thread and
    written by a writer thread; what it hands over (a range's closed files, or an error) waits
    in ``done`` for the export to rename it in range order."""

    def __init__(
        self,
        reader: Any,
        lake: Lake,
        table: IncrementalTable,
        ranges: Sequence[tuple[int, int]],
        high: int,
        stop: threading.Event,
        *,
        batch_bytes: int,
        row_group_rows: int,
    ) -> None:
        ready: queue.Queue[pa.RecordBatch | _RangeDone | BaseException] = queue.Queue(QUEUE_BATCHES)
        # One range ahead of the export at most: a range done early waits as closed files on disk.
        self.done: queue.Queue[RangeFiles | BaseException] = queue.Queue(1)
        self.threads = [
            threading.Thread(
                target=_stream_ranges,
                args=(reader, table, ranges, high, ready, stop, batch_bytes),
                name=f"export-{table.name}-read",
            ),
            threading.Thread(
                target=_write_ranges,
                args=(lake, table, ranges, ready, self.done, stop, row_group_rows),
                name=f"export-{table.name}-write",
            ),
        ]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        """After ``stop``: wait for both threads and give up what was handed over but not renamed."""
        for thread in self.threads:
            thread.join()
        while True:
            try:
                left = self.done.get_nowait()
            except queue.Empty:
                return
            if isinstance(left, RangeFiles):
                left.abort()


class RangeFiles:
    """The files of one sequence range (lo, hi], one per UTC date of its rows (one in all for a table
    without a date column: a versioned one), written row group by
    row group as the rows arrive and renamed into place by :meth:`commit` (the name makes re-runs
    idempotent). Until then only temporary files exist, which readers skip and the next run removes."""

    def __init__(self, lake: Lake, table: IncrementalTable, lo: int, hi: int, row_group_rows: int) -> None:
        self.lake, self.table, self.lo, self.hi = lake, table, lo, hi
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._files: dict[str, LakeFileWriter] = {}
        self._gathered: dict[str, list[pa.Table]] = {}

    def add(self, rows: pa.Table) -> None:
        self.rows += rows.num_rows
        column = self.table.date_column
        # A table without a date column is one file per range ("" stands for it).
        for day, part in split_by_day(rows, column) if column else [("", rows)]:
            parts = self._gathered.setdefault(day, [])
            parts.append(part)
            if sum(p.num_rows for p in parts) >= self.row_group_rows:
                self._write(day)

    def _write(self, day: str) -> None:
        parts = self._gathered.pop(day, [])
        if not parts:
            return
        file = self._files.get(day)
        if file is None:
            name = f"{self.table.name}-{self.lo:020d}-{self.hi:020d}.parquet"
            folders = (f"date={day}",) if day else ()
            path = self.lake.path(self.table.name, *folders, name)
            file = self._files[day] = LakeFileWriter(
                self.lake,
                path,
                self.table.schema,
                dictionary=list(self.table.dictionary),
                delta=list(self.table.delta),
                statistics=list(self.table.statistics),
            )
        rows = pa.concat_tables(parts)
        file.write(rows, row_group_rows=rows.num_rows)

    def seal(self) -> None:
        """Write what is gathered and close every file, still under its temporary name."""
        for day in list(self._gathered):
            self._write(day)
        for file in self._files.values():
            file.close()

    def commit(self) -> list[str]:
        """Seal the files and rename them into place; the paths, by date."""
        self.seal()
        written = []
        for day in sorted(self._files):
            self._files[day].commit()
            written.append(self._files.pop(day).path)
        return written

    def abort(self) -> None:
        for file in self._files.values():
            file.abort()
        self._files.clear()
        self._gathered.clear()


def export_table(
    database_url: str,
    lake: Lake,
    table: IncrementalTable,
    *,
    chunk_rows: int = 250_000,
    progress: Progress | None = None,
    stop_after_chunks: int | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
    batch_bytes: int = BATCH_BYTES,
    lanes: int = LANES,
) -> ExportResult:
    """Export the rows of ``table`` the lake does not hold yet. Safe to re-run at any point.

    Rows are read in ranges of ``chunk_rows`` sequence numbers (the watermark moves after each),
    streamed in record batches of about ``batch_bytes`` and written in row groups of at least
    ``row_group_rows`` rows per day (fewer: one row group per day of the range)."""
    started = time.perf_counter()
    watermark = read_watermark(lake, table.name)
    result = ExportResult(table=table.name, watermark_from=watermark, watermark_to=watermark)
    remove_orphans(lake, table.name, watermark)
    with (
        contextlib.ExitStack() as stack,
        psycopg.connect(libpq_url(database_url), autocommit=True) as conn,
        _open_reader(database_url) as reader,
    ):
        # The lake's state is the truth (a crash may have left Postgres a range behind).
        record_progress(conn, table.name, watermark)
        high = high_water_mark(conn, table.sequence)
        expected = max(high - watermark, 0)
        if expected > chunk_rows:
            summarize_new_ranges(conn, table)
        ranges = [(lo, min(lo + chunk_rows, high)) for lo in range(watermark, high, chunk_rows)]
        ranges = ranges[:stop_after_chunks] if stop_after_chunks is not None else ranges
        # Each lane's reader thread runs ahead of its writer by at most QUEUE_BATCHES batches, and
        # its writer ahead of the renames by a range; all of them spend their time in C with the
        # GIL released (ADBC's COPY decoder, DuckDB, Parquet's encoders), so the server's backends,
        # the decoders and the writers work at once. A versioned table has one lane: its
        # unbounded last range is then read after every other.
        count = 1 if table.versioned else max(1, min(lanes, len(ranges)))
        readers = [reader] + [stack.enter_context(_open_reader(database_url)) for _ in range(count - 1)]
        stop = threading.Event()
        running: list[_Lane] = []
        try:
            for k in range(count):
                running.append(
                    _Lane(
                        readers[k],
                        lake,
                        table,
                        ranges[k::count],
                        high,
                        stop,
                        batch_bytes=batch_bytes,
                        row_group_rows=row_group_rows,
                    )
                )
            for number, (lo, hi) in enumerate(ranges):
                item = running[number % count].done.get()
                if isinstance(item, BaseException):
                    raise item
                assert (item.lo, item.hi) == (lo, hi), "a lane handed over another range"
                try:
                    result.files += item.commit()
                except BaseException:
                    item.abort()
                    raise
                result.rows += item.rows
                # The watermark moves in order, only after the range's files are in place.
                _write_watermark(lake, table.name, hi, result.rows)
                record_progress(conn, table.name, hi)
                result.watermark_to = hi
                if progress:
                    progress(hi - watermark, expected)
        finally:
            stop.set()
            for lane in running:
                lane.join()
        if table.versioned and result.watermark_to == high:
            remove_snapshots(lake, table)
    result.seconds = time.perf_counter() - started
    return result


def write_partitioned(lake: Lake, table: IncrementalTable, rows: pa.Table, lo: int, hi: int) -> list[str]:
    """The files of the sequence range (lo, hi] holding ``rows``: see :class:`RangeFiles`."""
    files = RangeFiles(lake, table, lo, hi, max(rows.num_rows, 1))
    try:
        files.add(rows)
        return files.commit()
    except BaseException:
        files.abort()
        raise


def split_by_day(rows: pa.Table, column: str) -> list[tuple[str, pa.Table]]:
    """``rows`` grouped by the UTC date of ``column`` (never null in an exported table).

    Rows arrive in sequence order, which is nearly always time order: then each day is one run
    and its part is a zero-copy slice (filtering once per day copied every row). Otherwise the
    rows are put in day order once (a stable sort, so each day keeps sequence order) and sliced.
    """
    if rows.num_rows == 0:
        return []
    days = pc.cast(rows[column], pa.date32()).combine_chunks()
    runs = pc.run_end_encode(days)
    if len(runs.values) != len(pc.unique(runs.values)):
        order = pc.sort_indices(days)  # stable
        rows, days = rows.take(order), days.take(order)
        runs = pc.run_end_encode(days)
    parts, start = [], 0
    for day, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        parts.append((str(day), rows.slice(start, end - start)))
        start = end
    return parts


def export_snapshot(
    database_url: str, lake: Lake, snapshot: Snapshot, *, day: str | None = None
) -> ExportResult:
    """Copy a small table whole into ``<name>/snapshot_date=<day>/<name>.parquet``."""
    started = time.perf_counter()
    day = day or datetime.now(UTC).date().isoformat()
    with _open_reader(database_url) as reader:
        table = _read_arrow(reader, snapshot.query, snapshot.schema)
    path = lake.path(snapshot.name, f"snapshot_date={day}", f"{snapshot.name}.parquet")
    lake.write_parquet(table, path)
    return ExportResult(
        table=snapshot.name, rows=table.num_rows, files=[path], seconds=time.perf_counter() - started
    )


def lake_keys(lake: Lake, table: IncrementalTable) -> pl.DataFrame:
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


def write_schemas(lake: Lake) -> None:
    """An empty file per lake table with its schema, so the warehouse can be built before any data."""
    for name, schema in [(t.name, t.schema) for t in INCREMENTAL.values()] + [
        (s.name, s.schema) for s in SNAPSHOTS.values()
    ]:
        path = lake.path("_schema", f"{name}.parquet")
        if not lake.exists(path):
            lake.write_parquet(schema.empty_table(), path)
