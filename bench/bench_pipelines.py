"""Pipeline figures (issue: pipelines and warehouse), each beside a baseline from the same run.

1. export-lake over 10 million events: rows/s against a raw `COPY ... TO STDOUT (FORMAT binary)`
   of the same table read from Python (target: >= 50%), and the export's peak RSS (< 1 GB).
2. build-warehouse over the same 10 million events: seconds and rows/s (aim: under 60 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
from harness import PeakRss, private_postgres, row

from api.db.engine import libpq_url

EVENTS = int(os.environ.get("KEEL_BENCH_EVENTS", 10_000_000))
ORGS = 20
USERS = 2_000
DAYS = 60


def load_events(url: str) -> None:
    """Fill the events table server-side (the figure here is the export, not the load): sixty days
    of events arriving in time order, as ingestion writes them."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("SELECT keel_ensure_event_partitions(current_date, 1)")
        step = 1_000_000
        for start in range(0, EVENTS, step):
            conn.execute(
                """
                INSERT INTO events (organization_id, message_id, event, user_id, timestamp, received_at,
                                    properties, context)
                SELECT
                    ('00000000-0000-7000-8000-' || lpad(to_hex(i %% %(orgs)s), 12, '0'))::uuid,
                    'm-' || i,
                    (ARRAY['dashboard.viewed', 'report.created', 'search.performed'])[1 + i %% 3],
                    'user-' || (i %% %(users)s),
                    now() - make_interval(secs => ((%(events)s - i)::float8 * %(seconds)s / %(events)s)),
                    now(),
                    jsonb_build_object('plan', 'pro', 'n', i, 'path', '/projects/' || (i %% 97)),
                    '{"library": {"name": "bench", "version": "1.0"}}'::jsonb
                FROM generate_series(%(start)s, %(stop)s) AS i
                """,
                {
                    "orgs": ORGS,
                    "users": USERS,
                    "events": EVENTS,
                    "seconds": DAYS * 86400,
                    "start": start,
                    "stop": min(start + step, EVENTS) - 1,
                },
            )
        conn.execute("ANALYZE events")


def binary_copy_out(url: str) -> float:
    with psycopg.connect(libpq_url(url)) as conn:
        started = time.perf_counter()
        rows = 0
        with conn.cursor().copy("COPY (SELECT * FROM events) TO STDOUT (FORMAT binary)") as copy:
            for _ in copy:
                rows += 1
        return rows / (time.perf_counter() - started)


def export_in_subprocess(url: str, lake: Path) -> tuple[float, float]:
    """The export as `keel flows run export-lake` does it, in its own process so its RSS is its own."""
    script = (
        "import time,sys; from pipelines.lake import Lake; from pipelines.tasks import export as e;"
        f"t=time.perf_counter(); r=e.export_table({url!r}, Lake.open({str(lake)!r}), e.EVENTS);"
        "print(r.rows/(time.perf_counter()-t))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    with PeakRss(psutil.Process(proc.pid)) as rss:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("the export failed")
    return float(out.strip()), rss.peak


def main() -> None:
    from pipelines.lake import Lake
    from pipelines.tasks import export as export_tasks
    from warehouse.build import build_warehouse

    print(f"bench_pipelines: export and warehouse over {EVENTS:,} events")
    with private_postgres() as url, tempfile.TemporaryDirectory(prefix="keel-bench-lake-") as work:
        started = time.perf_counter()
        load_events(url)
        print(f"  (loaded {EVENTS:,} events server-side in {time.perf_counter() - started:.0f} s)")
        baseline = binary_copy_out(url)
        lake_dir = Path(work) / "lake"
        rate, peak = export_in_subprocess(url, lake_dir)
        lake = Lake.open(str(lake_dir))
        export_tasks.write_schemas(lake)
        for snapshot in export_tasks.SNAPSHOTS.values():
            export_tasks.export_snapshot(url, lake, snapshot)
        for table in export_tasks.VERSIONED.values():
            export_tasks.export_table(url, lake, table)
        export_tasks.export_table(url, lake, export_tasks.AUDIT_LOG)
        built = build_warehouse(str(lake_dir), Path(work) / "warehouse.duckdb")
        row("baseline: COPY events TO STDOUT (FORMAT binary)", f"{baseline:,.0f} rows/s")
        row(
            "export-lake (events to zstd Parquet)",
            f"{rate:,.0f} rows/s",
            f"{rate / baseline:.0%} of binary COPY (target >= 50%)",
        )
        row("export-lake peak RSS", f"{peak:,.0f} MB", "(target < 1 GB)")
        row(
            "build-warehouse",
            f"{built.seconds:,.1f} s",
            f"{EVENTS / built.seconds:,.0f} events/s (aim < 60 s)",
        )


if __name__ == "__main__":
    main()
