"""The lake on a distributed engine: Apache Spark (local mode) reads the Parquet lake as the
exporter lays it out and computes daily active users per organization and the feature-adoption
mart's figures, which equal the DuckDB warehouse's exactly.

One Spark session for the module (its start-up is slow); Java 17 comes from `make test-tools`."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import write_lake_rows as write_rows
from warehouse.build import build_warehouse
from warehouse.rules import MAU_DAYS

AS_OF = date(2026, 2, 14)


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("keel-lake")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def lake_and_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three organizations' six weeks of events (anonymous ones, events exported twice), their
    members in two daily snapshots; the warehouse built from it."""
    root = tmp_path_factory.mktemp("spark-lake")
    lake = root / "lake"
    export_tasks.write_schemas(Lake.open(str(lake)))
    rng = random.Random(15)
    orgs = [str(uuid.uuid4()) for _ in range(3)]
    start = AS_OF - timedelta(days=41)
    write_rows(
        lake,
        "organizations",
        [{"id": o, "name": f"Org {i}", "slug": f"org-{i}", "status": "active", "created_at": datetime(2026, 1, 1, tzinfo=UTC)}
         for i, o in enumerate(orgs)],
        f"snapshot_date={start.isoformat()}",
    )  # fmt: skip
    for snapshot, removed in ((start, set()), (AS_OF - timedelta(days=3), {0, 1, 2})):
        write_rows(
            lake,
            "memberships",
            [{"id": f"00000000-0000-0000-0000-{o_i:04d}{u:08d}", "organization_id": o, "user_id": str(u),
              "role": "member", "status": "removed" if u in removed else ("active" if u % 5 else "invited"),
              "created_at": datetime(2026, 1, 1, tzinfo=UTC)}
             for o_i, o in enumerate(orgs) for u in range(12)],
            f"snapshot_date={snapshot.isoformat()}",
        )  # fmt: skip
    seq = 0
    events = ["report.exported", "dashboard.viewed", "alert.created", "invite.sent"]
    for offset in range(42):
        day = start + timedelta(days=offset)
        rows = []
        for org_i, org in enumerate(orgs):
            for n in range(rng.randint(0, 25)):
                seq += 1
                user = rng.randrange(12 + 4 * org_i)
                rows.append(
                    {"ingest_seq": seq, "organization_id": org, "message_id": f"{day}-{n}",
                     "event": rng.choice(events[: 2 + org_i]),
                     "user_id": None if rng.random() < 0.15 else f"u{user}", "anonymous_id": f"a{user}",
                     "timestamp": datetime(day.year, day.month, day.day, rng.randrange(24), tzinfo=UTC),
                     "received_at": datetime(day.year, day.month, day.day, 23, tzinfo=UTC)}
                )  # fmt: skip
        write_rows(lake, "events", rows, f"date={day.isoformat()}")
        if offset % 10 == 3:  # a range exported twice (a retried export): counted once
            again = [{**r, "ingest_seq": r["ingest_seq"] + 100_000} for r in rows[:5]]
            write_rows(lake, "events", again, f"date={day.isoformat()}/again")
    warehouse = root / "warehouse.duckdb"
    build_warehouse(str(lake), warehouse, as_of=AS_OF)
    return lake, warehouse


def duck(warehouse: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return sorted(con.execute(sql).fetchall())
    finally:
        con.close()


def events_view(spark: object, lake: Path) -> None:
    """The lake's events as Spark reads them (every Parquet file under events/, partition columns
    from the paths), deduplicated as stg_events is: a key's first export counts."""
    raw = spark.read.option("recursiveFileLookup", "true").parquet(str(lake / "events"))  # type: ignore[attr-defined]
    raw.createOrReplaceTempView("lake_events")
    spark.sql(  # type: ignore[attr-defined]
        """
        CREATE OR REPLACE TEMP VIEW events AS
        SELECT organization_id, message_id, event, user_id, to_date(`timestamp`) AS day FROM (
            SELECT *, row_number() OVER (PARTITION BY organization_id, message_id ORDER BY ingest_seq) AS copy
            FROM lake_events
        ) WHERE copy = 1
        """
    )


def test_spark_counts_the_daily_active_users_duckdb_does(
    spark: object, lake_and_warehouse: tuple[Path, Path]
) -> None:
    lake, warehouse = lake_and_warehouse
    events_view(spark, lake)
    from_spark = sorted(
        tuple(r)
        for r in spark.sql(  # type: ignore[attr-defined]
            "SELECT organization_id, day, count(DISTINCT user_id) AS dau FROM events"
            " WHERE user_id IS NOT NULL GROUP BY organization_id, day"
        ).collect()
    )
    from_duckdb = duck(warehouse, "SELECT organization_id, day, dau FROM org_active_users WHERE dau > 0")
    assert len(from_spark) > 60
    assert from_spark == from_duckdb


def test_spark_computes_the_feature_adoption_mart(
    spark: object, lake_and_warehouse: tuple[Path, Path]
) -> None:
    lake, warehouse = lake_and_warehouse
    events_view(spark, lake)
    spark.read.parquet(str(lake / "memberships")).createOrReplaceTempView("lake_memberships")  # type: ignore[attr-defined]
    as_of = AS_OF.isoformat()
    rows = spark.sql(  # type: ignore[attr-defined]
        f"""
        WITH snapshot AS (
            SELECT max(snapshot_date) AS d FROM lake_memberships WHERE snapshot_date <= DATE '{as_of}'
        ),
        members AS (
            SELECT organization_id, count(*) AS active_members FROM lake_memberships
            WHERE snapshot_date = (SELECT d FROM snapshot) AND status = 'active' GROUP BY organization_id
        ),
        usage AS (
            SELECT organization_id, event, min(day) AS first_seen, max(day) AS last_seen,
                   count(DISTINCT user_id) AS users,
                   count(DISTINCT CASE WHEN day > date_sub(DATE '{as_of}', {MAU_DAYS}) AND day <= DATE '{as_of}'
                                       THEN user_id END) AS users_30d
            FROM events WHERE day <= DATE '{as_of}' GROUP BY organization_id, event
        )
        SELECT u.*, coalesce(m.active_members, 0) AS active_members,
               CASE WHEN m.active_members > 0 THEN u.users_30d / m.active_members END AS share
        FROM usage u LEFT JOIN members m USING (organization_id)
        """
    ).collect()
    from_spark = sorted(tuple(r) for r in rows)
    from_duckdb = duck(
        warehouse,
        "SELECT organization_id, event, first_seen, last_seen, users, users_30d, active_members,"
        " share_of_active_members FROM feature_adoption",
    )
    assert len(from_spark) == 9
    assert from_spark == from_duckdb
