"""Warehouse figures (issue 15), each beside a baseline from the same run.

1. build-warehouse (``dbt build``: models and tests, then ``dbt docs generate``) over 10 million
   events in the Parquet lake, beside the same DuckDB statements run directly (the compiled SQL of
   every model and test dbt ran, in dbt's order): dbt's own overhead (aim: < 1.5x and < 60 s).
2. Daily active users per organization over the same lake: Apache Spark in local mode beside
   DuckDB (no target: the cost of the scale-out path on one machine).

``KEEL_BENCH_EVENTS`` sets the size (default 10,000,000).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import duckdb
from harness import row

EVENTS = int(os.environ.get("KEEL_BENCH_EVENTS", 10_000_000))
ORGS = 20
USERS = 2_000
DAYS = 60
AS_OF = "2026-03-01"

DAU = """
SELECT organization_id, day, count(DISTINCT user_id) AS dau FROM (
    SELECT organization_id, user_id, CAST({q}timestamp{q} AS DATE) AS day,
           row_number() OVER (PARTITION BY organization_id, message_id ORDER BY ingest_seq) AS copy
    FROM {events}
) WHERE copy = 1 AND user_id IS NOT NULL GROUP BY organization_id, day
"""


def org_id(i: int) -> str:
    return f"00000000-0000-7000-8000-{i:012x}"


def write_lake(lake: Path) -> None:
    """The lake as the exporter lays it out: events by UTC date, daily snapshots of the rest."""
    from pipelines.lake import Lake
    from pipelines.tasks import export as export_tasks

    export_tasks.write_schemas(Lake.open(str(lake)))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    at = f"TIMESTAMPTZ '{AS_OF} 00:00:00+00'"
    when = f"{at} - to_microseconds(CAST(({EVENTS} - i) * {DAYS * 86400e6} / {EVENTS} AS BIGINT))"
    con.execute(
        f"""
        COPY (
            SELECT
                CAST(i AS BIGINT) AS ingest_seq,
                '00000000-0000-7000-8000-' || lpad(printf('%x', i % {ORGS}), 12, '0') AS organization_id,
                'm-' || i AS message_id,
                (['dashboard.viewed', 'report.created', 'search.performed'])[1 + i % 3] AS event,
                CASE WHEN i % 10 = 0 THEN NULL ELSE 'user-' || (i % {USERS}) END AS user_id,
                'anon-' || (i % {USERS}) AS anonymous_id,
                {when} AS "timestamp",
                {at} AS sent_at,
                {at} AS received_at,
                '{{"plan": "pro"}}' AS properties,
                '{{"library": {{"name": "bench"}}}}' AS context,
                CAST({when} AS DATE) AS date
            FROM range({EVENTS}) t(i)
        ) TO '{lake / "events"}' (FORMAT parquet, PARTITION_BY (date), COMPRESSION zstd)
        """
    )
    day = f"snapshot_date={AS_OF}"
    # Organizations are exported by version: one range file, a version per row.
    (lake / "organizations").mkdir(parents=True)
    versions = f"organizations-{0:020d}-{ORGS:020d}.parquet"
    con.execute(
        f"""
        COPY (
            SELECT i + 1 AS lake_version,
                   '00000000-0000-7000-8000-' || lpad(printf('%x', i), 12, '0') AS id, 'Org ' || i AS name,
                   'org-' || i AS slug, 'active' AS status, NULL::VARCHAR AS stripe_customer_id,
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' AS created_at,
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' AS updated_at,
                   NULL::TIMESTAMPTZ AS deleted_at, NULL::VARCHAR AS external_id, NULL::VARCHAR AS traits
            FROM range({ORGS}) t(i)
        ) TO '{lake / "organizations" / versions}' (FORMAT parquet)
        """
    )
    (lake / "memberships" / day).mkdir(parents=True)
    con.execute(
        f"""
        COPY (
            SELECT '00000000-0000-7000-9000-' || lpad(printf('%x', u), 12, '0') AS id,
                   '00000000-0000-7000-8000-' || lpad(printf('%x', u % {ORGS}), 12, '0') AS organization_id,
                   'user-' || u AS user_id, 'member' AS role, 'active' AS status,
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' AS created_at,
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' AS updated_at
            FROM range({USERS}) t(u)
        ) TO '{lake / "memberships" / day / "memberships.parquet"}' (FORMAT parquet)
        """
    )
    con.close()


def direct_duckdb(lake: Path, work_dir: Path, target: Path) -> float:
    """The statements dbt ran (its compiled models and tests, in run_results' order), in DuckDB alone."""
    from warehouse.build import lay_lake
    from warehouse.rules import RULES

    manifest = json.loads((work_dir / "target" / "manifest.json").read_text())
    order = [
        r["unique_id"] for r in json.loads((work_dir / "target" / "run_results.json").read_text())["results"]
    ]
    started = time.perf_counter()
    con = duckdb.connect(str(target))
    con.execute("SET TimeZone = 'UTC'")
    lay_lake(con, str(lake))
    for rule in RULES:
        con.execute(rule.macro())
    con.execute(
        "CREATE OR REPLACE MACRO keel_valid_on(valid_from, valid_to, day) AS"
        " ((valid_from IS NULL OR day >= valid_from) AND (valid_to IS NULL OR day < valid_to))"
    )
    for uid in order:
        node = manifest["nodes"][uid]
        sql = node["compiled_code"]
        if node["resource_type"] == "model":
            kind = "VIEW" if node["config"]["materialized"] == "view" else "TABLE"
            con.execute(f'CREATE {kind} "main"."{node["name"]}" AS {sql}')
        elif node["resource_type"] == "test":
            failures = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]  # type: ignore[index]
            assert failures == 0, node["name"]
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - started


def spark_dau(lake: Path) -> tuple[float, float, int]:
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[*]")
        .appName("keel-bench")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.memory", "2g")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    start_up = time.perf_counter() - started
    try:
        started = time.perf_counter()
        spark.read.parquet(str(lake / "events")).createOrReplaceTempView("events")
        rows = len(spark.sql(DAU.format(events="events", q="`")).collect())
        return start_up, time.perf_counter() - started, rows
    finally:
        spark.stop()


def main() -> None:
    from datetime import date

    from warehouse.build import build_warehouse

    print(f"bench_warehouse: dbt build and DAU over {EVENTS:,} events")
    with tempfile.TemporaryDirectory(prefix="keel-bench-warehouse-") as tmp:
        work = Path(tmp)
        lake = work / "lake"
        started = time.perf_counter()
        write_lake(lake)
        print(f"  (wrote the lake in {time.perf_counter() - started:.0f} s)")
        warehouse = work / "warehouse.duckdb"
        built = build_warehouse(str(lake), warehouse, as_of=date.fromisoformat(AS_OF))
        direct = direct_duckdb(lake, warehouse.with_name(f".{warehouse.name}.dbt"), work / "direct.duckdb")
        row("baseline: the same statements in DuckDB alone", f"{direct:,.1f} s")
        row(
            "build-warehouse (dbt build + docs generate)",
            f"{built.seconds:,.1f} s",
            f"{built.seconds / direct:.2f}x the statements alone (aim < 1.5x, < 60 s)",
        )
        con = duckdb.connect()
        files = f"read_parquet('{lake / 'events'}/**/*.parquet')"
        started = time.perf_counter()
        duck_rows = len(con.execute(DAU.format(events=files, q=chr(34))).fetchall())
        duck_seconds = time.perf_counter() - started
        con.close()
        start_up, spark_seconds, spark_rows = spark_dau(lake)
        assert spark_rows == duck_rows, (spark_rows, duck_rows)
        row("baseline: DAU per organization in DuckDB (over the Parquet lake)", f"{duck_seconds:,.2f} s")
        row(
            "DAU per organization in Spark local mode",
            f"{spark_seconds:,.2f} s",
            f"{spark_seconds / duck_seconds:.1f}x DuckDB (+ {start_up:.1f} s session start-up); no target",
        )


if __name__ == "__main__":
    main()
