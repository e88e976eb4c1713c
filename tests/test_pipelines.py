"""The pipelines as their users see them: exact marts from known events, an idempotent and
crash-safe export, retention that never drops what the lake lacks, and the analytics API."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import psycopg
import pytest
from sqlalchemy import Engine

from api.db.engine import libpq_url
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from pipelines.tasks.retention import prune_events
from tests.harness import OrgWorld, auth, make_org

FEATURES = ["dashboard.viewed", "report.created", "report.exported", "search.performed"]
DAYS = 45


def known_activity(today: date, users: int, seed: int) -> list[tuple[date, str, str]]:
    """(day, user, event) rows with a pattern whose DAU/WAU/MAU are easy to get wrong."""
    rows = []
    for back in range(DAYS):
        day = today - timedelta(days=back)
        for i in range(users):
            if (i * 7 + back * (seed + 3)) % 5 < 2 or (i == 0 and back % 9 == 0):
                for k in range(1 + (i + back) % 3):
                    rows.append((day, f"user-{seed}-{i}", FEATURES[(i + k + back) % len(FEATURES)]))
    return rows


def send(client: httpx.Client, key: str, rows: list[tuple[date, str, str]]) -> None:
    events = [
        {
            "event": name,
            "user_id": user,
            "message_id": f"{day}-{user}-{n}",
            "timestamp": datetime(day.year, day.month, day.day, 12, tzinfo=UTC).isoformat(),
        }
        for n, (day, user, name) in enumerate(rows)
    ]
    for start in range(0, len(events), 1000):
        response = client.post(
            "/v1/events/batch", json={"events": events[start : start + 1000]}, headers=auth(key)
        )
        assert response.status_code == 200 and not response.json()["rejected"], response.text


def expected_figures(rows: list[tuple[date, str, str]], today: date) -> dict[date, dict[str, int]]:
    by_day: dict[date, set[str]] = defaultdict(set)
    events: dict[date, int] = defaultdict(int)
    first: dict[str, date] = {}
    for day, user, _ in rows:
        by_day[day].add(user)
        events[day] += 1
        first[user] = min(first.get(user, day), day)
    start = min(by_day)
    out = {}
    day = start
    while day <= today:

        def window(n: int, end: date = day) -> int:
            return len(set().union(*(by_day.get(end - timedelta(days=b), set()) for b in range(n))))

        out[day] = {
            "events": events.get(day, 0),
            "active_users": len(by_day.get(day, set())),
            "new_users": sum(1 for d in first.values() if d == day),
            "dau": len(by_day.get(day, set())),
            "wau": window(7),
            "mau": window(30),
        }
        day += timedelta(days=1)
    return out


def assert_lake_holds_postgres_events_once(lake: Lake, database_url: str) -> None:
    """Every event row Postgres holds is in the lake once: each key as many times as Postgres
    holds it (a key sent again after the dedupe window has passed is a second event, and another
    test of the session may have stored one)."""
    keys = export_tasks.lake_keys(lake, export_tasks.EVENTS)
    assert Counter(keys.iter_rows()) == pg_keys(database_url)


def test_marts_match_ground_truth_exactly(
    client: httpx.Client, engine: Engine, prefect_harness: None, pipeline_env: dict[str, Path]
) -> None:
    from pipelines.flows import build_warehouse_flow, export_lake

    today = datetime.now(UTC).date()
    worlds = {seed: make_org(client, engine, roles=("owner", "member")) for seed in (1, 2)}
    truth = {}
    for seed, world in worlds.items():
        rows = known_activity(today, users=12, seed=seed)
        send(client, world.ingest_key, rows)
        truth[world.id] = (rows, expected_figures(rows, today))

    export_lake()
    build_warehouse_flow(as_of=today.isoformat())

    con = duckdb.connect(str(pipeline_env["warehouse"]), read_only=True)
    try:
        for org_id, (rows, expected) in truth.items():
            actual = {
                r[0]: dict(
                    zip(("events", "active_users", "new_users", "dau", "wau", "mau"), r[1:], strict=True)
                )
                for r in con.execute(
                    "SELECT a.day, a.events, a.active_users, a.new_users, u.dau, u.wau, u.mau"
                    " FROM org_daily_activity a JOIN org_active_users u USING (organization_id, day)"
                    " WHERE organization_id = ?",
                    [org_id],
                ).fetchall()
            }
            assert actual == expected
            adoption = {
                r[0]: (r[1], r[2], r[3])
                for r in con.execute(
                    "SELECT event, first_seen, last_seen, users FROM feature_adoption WHERE organization_id = ?",
                    [org_id],
                ).fetchall()
            }
            for feature in FEATURES:
                used = [(d, u) for d, u, e in rows if e == feature]
                assert adoption[feature] == (
                    min(d for d, _ in used),
                    max(d for d, _ in used),
                    len({u for _, u in used}),
                )
            members = con.execute(
                "SELECT active_members, active_users FROM seat_utilization WHERE organization_id = ? AND day = ?",
                [org_id, today],
            ).fetchone()
            assert members == (2, expected[today]["mau"])
            health = con.execute(
                "SELECT score, label, wau_now, mau FROM org_health WHERE organization_id = ?", [org_id]
            ).fetchone()
            assert (
                health is not None and 0 <= health[0] <= 100 and health[1] in {"healthy", "watch", "at_risk"}
            )
            assert health[2:] == (expected[today]["wau"], expected[today]["mau"])
    finally:
        con.close()


def pg_keys(database_url: str) -> Counter[tuple[str, str]]:
    """How many events Postgres holds for each key."""
    with psycopg.connect(libpq_url(database_url)) as conn:
        return Counter((str(o), m) for o, m in conn.execute("SELECT organization_id, message_id FROM events"))


def test_export_twice_changes_nothing(
    client: httpx.Client, engine: Engine, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=5, seed=7))
    lake = Lake.open(str(pipeline_env["lake"]))
    first = export_tasks.export_table(database_url, lake, export_tasks.EVENTS, chunk_rows=500)
    second = export_tasks.export_table(database_url, lake, export_tasks.EVENTS, chunk_rows=500)
    assert first.rows > 0 and second.rows == 0
    assert_lake_holds_postgres_events_once(lake, database_url)


def test_a_crash_between_writing_and_moving_the_watermark_leaves_no_duplicates(
    client: httpx.Client, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=4, seed=3))
    lake = Lake.open(str(pipeline_env["lake"]))
    export_tasks.export_table(database_url, lake, export_tasks.EVENTS, chunk_rows=50, stop_after_chunks=2)
    watermark = export_tasks.read_watermark(lake, "events")
    # A run that wrote the next range's files and died before moving the watermark:
    events = export_tasks.EVENTS
    with export_tasks._open_reader(database_url) as reader:
        rows = export_tasks._read_arrow(
            reader, export_tasks._range_query(events, watermark, watermark + 700), events.schema
        )
    assert rows.num_rows > 0
    export_tasks.write_partitioned(lake, events, rows, watermark, watermark + 700)
    export_tasks.export_table(database_url, lake, export_tasks.EVENTS, chunk_rows=1000)
    assert_lake_holds_postgres_events_once(lake, database_url)


def test_a_range_streamed_in_many_batches_is_one_file_per_day_in_row_groups(
    client: httpx.Client, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    """The reader streams small batches (a few rows each) while the writer gathers each day's rows
    into row groups: still one file per range and date, holding that range's rows of that day,
    every row once."""
    import pyarrow.parquet as pq

    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=6, seed=23))
    lake = Lake.open(str(pipeline_env["lake"]))
    result = export_tasks.export_table(
        database_url, lake, export_tasks.EVENTS, chunk_rows=2000, row_group_rows=2, batch_bytes=1024
    )
    assert result.rows > 200
    assert_lake_holds_postgres_events_once(lake, database_url)
    seen: set[tuple[str, str]] = set()
    row_groups = []
    for path in lake.list_files("events"):
        match = export_tasks.FILE_NAME.search(path)
        assert match is not None
        day = Path(path).parent.name.removeprefix("date=")
        assert (day, match.group("lo")) not in seen, "two files for one range and date"
        seen.add((day, match.group("lo")))
        with lake.fs.open_input_file(path) as source:
            parquet = pq.ParquetFile(source)
            row_groups.append(parquet.metadata.num_row_groups)
            rows = parquet.read(columns=["ingest_seq", "timestamp"])
        assert {t.date().isoformat() for t in rows["timestamp"].to_pylist()} == {day}
        lo, hi = int(match.group("lo")), int(match.group("hi"))
        assert all(lo < seq <= hi for seq in rows["ingest_seq"].to_pylist())
    assert max(row_groups) > 1, "no day was large enough to be written in several row groups"


def test_lanes_rename_ranges_strictly_in_order(
    client: httpx.Client, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    """Three lanes read and write ranges at once, yet a range's files are renamed into place
    only after every range before it, and the watermark moves with them: whenever the watermark
    moves, no finished file lies past it (a lane ahead holds temporary files only)."""
    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=6, seed=31))
    lake = Lake.open(str(pipeline_env["lake"]))
    start = export_tasks.read_watermark(lake, "events")
    seen: list[int] = []

    def check(done: int, expected: int) -> None:
        watermark = export_tasks.read_watermark(lake, "events")
        assert watermark == start + done
        for path in lake.list_files("events"):
            match = export_tasks.FILE_NAME.search(path)
            assert match is not None and int(match.group("hi")) <= watermark, "a range renamed early"
        seen.append(watermark)

    result = export_tasks.export_table(
        database_url, lake, export_tasks.EVENTS, chunk_rows=40, lanes=3, progress=check
    )
    assert len(seen) >= 6 and seen == sorted(seen) and seen[-1] == result.watermark_to
    assert not list(pipeline_env["lake"].glob("**/.tmp-*")), "a temporary file was left behind"
    assert_lake_holds_postgres_events_once(lake, database_url)


def test_an_error_in_the_middle_of_the_stream_leaves_only_whole_ranges_behind(
    client: httpx.Client, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    """Postgres fails the read half way through a range (here a division by zero at one row): the
    export raises it, the reader thread ends, the files of the ranges before it stay with their
    watermark, nothing of the broken range is left visible, and the next run completes it once."""
    import dataclasses

    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=6, seed=29))
    lake = Lake.open(str(pipeline_env["lake"]))
    events = export_tasks.EVENTS
    with psycopg.connect(libpq_url(database_url)) as conn:
        low, high = conn.execute("SELECT min(ingest_seq), max(ingest_seq) FROM events").fetchone()  # type: ignore[misc]
    start = export_tasks.read_watermark(lake, "events")
    poison = (low + high) // 2
    broken = dataclasses.replace(
        events, select=f"{events.select}, 1 / ({events.seq_expr} - {poison}) AS poison"
    )
    threads = threading.active_count()
    with pytest.raises(Exception, match="division by zero"):
        export_tasks.export_table(database_url, lake, broken, chunk_rows=100, batch_bytes=4096)
    assert threading.active_count() == threads, "the reader thread outlived the export"
    watermark = export_tasks.read_watermark(lake, "events")
    assert start < watermark < poison <= watermark + 100
    assert not list(pipeline_env["lake"].glob("**/.tmp-*")), "a temporary file was left behind"
    for path in lake.list_files("events"):
        match = export_tasks.FILE_NAME.search(path)
        assert match is not None and int(match.group("hi")) <= watermark
    export_tasks.export_table(database_url, lake, events, chunk_rows=100)
    assert_lake_holds_postgres_events_once(lake, database_url)


def test_killing_the_export_process_mid_run_then_rerunning(
    client: httpx.Client, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=10, seed=5))
    lake_dir = pipeline_env["lake"]
    script = (
        "import time; from pipelines.lake import Lake; from pipelines.tasks import export as e;"
        # a pause after each range keeps the run long enough to be killed in the middle of it
        f"e.export_table({database_url!r}, Lake.open({str(lake_dir)!r}), e.EVENTS, chunk_rows=50,"
        " progress=lambda done, total: time.sleep(0.05))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(lake_dir.glob("events/**/*.parquet"))) < 20:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    lake = Lake.open(str(lake_dir))
    export_tasks.export_table(database_url, lake, export_tasks.EVENTS, chunk_rows=5000)
    assert_lake_holds_postgres_events_once(lake, database_url)
    assert not list(lake_dir.glob("**/.tmp-*")), "a temporary file was left visible"


def test_a_half_written_temporary_file_is_never_read_and_the_next_run_removes_it(
    client: httpx.Client, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    from warehouse.build import build_warehouse

    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=4, seed=13))
    lake = Lake.open(str(pipeline_env["lake"]))
    export_tasks.write_schemas(lake)
    export_tasks.export_table(database_url, lake, export_tasks.EVENTS, chunk_rows=300, stop_after_chunks=1)
    for snapshot in export_tasks.SNAPSHOTS.values():
        export_tasks.export_snapshot(database_url, lake, snapshot)
    for table in export_tasks.VERSIONED.values():
        export_tasks.export_table(database_url, lake, table)
    # What a writer killed in the middle of a file leaves: its temporary name, cut short.
    partition = Path(lake.list_files("events")[0]).parent
    leftover = partition / ".tmp-killed.parquet"
    leftover.write_bytes(b"PAR1" + b"\0" * 100)
    # ...or killed while moving the watermark; another table's state write is not this run's.
    state_leftover = pipeline_env["lake"] / "_state" / ".tmp-events.json.0123abcd"
    state_leftover.write_text('{"watermark": 1')
    other_table = pipeline_env["lake"] / "_state" / ".tmp-audit_log.json.0123abcd"
    other_table.write_text("{}")

    assert str(leftover) not in lake.list_files("events")
    export_tasks.lake_keys(lake, export_tasks.EVENTS)  # reads every finished file, not the leftover
    build_warehouse(str(pipeline_env["lake"]), pipeline_env["warehouse"])
    export_tasks.export_table(database_url, lake, export_tasks.EVENTS)
    assert not leftover.exists() and not state_leftover.exists() and other_table.exists()
    assert_lake_holds_postgres_events_once(lake, database_url)


def test_a_long_backlog_is_read_through_a_summarized_brin_index(
    client: httpx.Client,
    org: OrgWorld,
    database_url: str,
    admin_database_url: str,
    pipeline_env: dict[str, Path],
) -> None:
    """Rows appended since the last vacuum sit in BRIN ranges without a summary, which match every
    range query: the export summarizes them first, or each range would read them all again
    (as the application role, through the owner's keel_summarize_brin)."""
    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=8, seed=17))
    # The test's own setup and checks run as the owner: only the owner may (de)summarize directly.
    with psycopg.connect(libpq_url(admin_database_url), autocommit=True) as conn:
        indexes = export_tasks.brin_indexes(conn, export_tasks.EVENTS)
        assert indexes and all(name.startswith("events_p") for name in indexes)
        assert export_tasks.brin_indexes(conn, export_tasks.AUDIT_LOG) == ["ix_audit_log_export_seq_brin"]

        def summarize(index: str) -> int:
            return conn.execute("SELECT brin_summarize_new_values(%s::regclass)", (index,)).fetchone()[0]  # type: ignore[index]

        def forget_summaries() -> None:  # as a freshly loaded table is
            for index in indexes:
                conn.execute(
                    "SELECT brin_desummarize_range(indexrelid, b) FROM pg_index,"
                    " generate_series(0, pg_relation_size(indrelid) / 8192, 128) AS b"
                    " WHERE indexrelid = %s::regclass",
                    (index,),
                )

        tables = [
            r[0]
            for r in conn.execute(
                "SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = ANY(%s::regclass[])",
                (indexes,),
            )
        ]
        for name in tables:  # no vacuum may summarize them behind the test's back
            conn.execute(f"ALTER TABLE {name} SET (autovacuum_enabled = off)")
        try:
            forget_summaries()
            assert sum(summarize(index) for index in indexes) > 0  # there was something to summarize
            forget_summaries()
            lake = Lake.open(str(pipeline_env["lake"]))
            export_tasks.export_table(database_url, lake, export_tasks.EVENTS, chunk_rows=200)
            assert [summarize(index) for index in indexes] == [0] * len(indexes)  # the export did
        finally:
            for name in tables:
                conn.execute(f"ALTER TABLE {name} RESET (autovacuum_enabled)")
    assert_lake_holds_postgres_events_once(lake, database_url)


def test_an_exporter_that_may_only_read_still_exports_everything(
    client: httpx.Client,
    org: OrgWorld,
    database_url: str,
    admin_database_url: str,
    pipeline_env: dict[str, Path],
) -> None:
    """Summarizing needs the owner's function, recording progress an insert; a read-only role's
    export is slower (and lets Postgres prune nothing), never wrong."""
    from sqlalchemy.engine import make_url

    send(client, org.ingest_key, known_activity(datetime.now(UTC).date(), users=4, seed=19))
    with psycopg.connect(libpq_url(admin_database_url), autocommit=True) as conn:
        conn.execute("CREATE ROLE keel_lake_reader LOGIN")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO keel_lake_reader")
        conn.execute("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO keel_lake_reader")
    reader_url = make_url(database_url).set(username="keel_lake_reader").render_as_string(hide_password=False)
    assert reader_url != database_url
    lake = Lake.open(str(pipeline_env["lake"]))
    export_tasks.export_table(reader_url, lake, export_tasks.EVENTS, chunk_rows=200)
    assert_lake_holds_postgres_events_once(lake, database_url)


def test_rows_split_by_day_keep_every_row_in_sequence_order() -> None:
    import pyarrow as pa

    def at(day: int, hour: int) -> datetime:
        return datetime(2025, 3, day, hour, tzinfo=UTC)

    stamps = {
        "in time order": [at(1, 1), at(1, 2), at(2, 0), at(2, 5), at(3, 9)],
        "interleaved": [at(2, 1), at(1, 2), at(2, 0), at(1, 5), at(3, 9)],
    }
    for case, times in stamps.items():
        rows = pa.table({"seq": list(range(len(times))), "ts": pa.array(times, pa.timestamp("us", tz="UTC"))})
        parts = {day: part["seq"].to_pylist() for day, part in export_tasks.split_by_day(rows, "ts")}
        expected: dict[str, list[int]] = defaultdict(list)
        for seq, ts in enumerate(times):
            expected[ts.date().isoformat()].append(seq)
        assert parts == expected, case


def test_retention_drops_only_what_the_lake_holds(database_url: str, pipeline_env: dict[str, Path]) -> None:
    lake = Lake.open(str(pipeline_env["lake"]))
    today = datetime.now(UTC).date()
    old_day = today - timedelta(days=40)
    org_id = uuid.uuid4()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("SELECT keel_ensure_event_partitions(%s, 1)", (old_day,))
        received = datetime(old_day.year, old_day.month, old_day.day, 9, tzinfo=UTC)
        conn.execute("INSERT INTO event_keys VALUES (%s, 'old-1', %s)", (org_id, received))
        conn.execute(
            "INSERT INTO events (organization_id, message_id, event, user_id, timestamp, received_at, properties, context)"
            " VALUES (%s, 'old-1', 'x', 'u', %s, %s, '{}', '{}')",
            (org_id, received, received),
        )
    partition = f"events_p{old_day:%Y%m%d}"
    kept = prune_events(database_url, lake, retention_days=30)
    assert partition in kept.kept and partition not in kept.dropped  # not exported yet
    export_tasks.export_table(database_url, lake, export_tasks.EVENTS)
    dropped = prune_events(database_url, lake, retention_days=30)
    assert partition in dropped.dropped and dropped.keys_removed >= 1
    with psycopg.connect(libpq_url(database_url)) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (partition,)).fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM event_keys WHERE organization_id = %s", (org_id,)
        ).fetchone() == (0,)
    keys = export_tasks.lake_keys(lake, export_tasks.EVENTS)
    assert (str(org_id), "old-1") in set(keys.iter_rows())


def test_analytics_api_reads_the_warehouse(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, staff_admin, database_url: str,
    pipeline_env: dict[str, Path], app, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from warehouse.build import build_warehouse

    # The live server reads the warehouse path from its settings; point this test's build there.
    warehouse = app.state.settings.resolved_warehouse_path
    today = datetime.now(UTC).date()
    rows = known_activity(today, users=6, seed=11)
    send(client, org.ingest_key, rows)
    lake = Lake.open(str(pipeline_env["lake"]))
    export_tasks.write_schemas(lake)
    for table in export_tasks.INCREMENTAL.values():
        export_tasks.export_table(database_url, lake, table)
    for snapshot in export_tasks.SNAPSHOTS.values():
        export_tasks.export_snapshot(database_url, lake, snapshot)
    build_warehouse(str(pipeline_env["lake"]), warehouse, as_of=today)
    expected = expected_figures(rows, today)

    response = client.get(f"/v1/orgs/{org.id}/analytics/activity", params={"from": str(today - timedelta(days=6)), "to": str(today)},
                          headers=org.headers("viewer"))  # fmt: skip
    assert response.status_code == 200, response.text
    days = response.json()["days"]
    assert [d["day"] for d in days] == [str(today - timedelta(days=b)) for b in range(6, -1, -1)]
    assert [(d["dau"], d["wau"], d["mau"]) for d in days] == [
        (
            expected[date.fromisoformat(d["day"])]["dau"],
            expected[date.fromisoformat(d["day"])]["wau"],
            expected[date.fromisoformat(d["day"])]["mau"],
        )
        for d in days
    ]
    bad = client.get(
        f"/v1/orgs/{org.id}/analytics/activity",
        params={"from": "2026-02-01", "to": "2026-01-01"},
        headers=org.headers("viewer"),
    )
    assert bad.status_code == 422
    assert (
        client.get(f"/v1/orgs/{org.id}/analytics/activity", headers=other_org.headers("owner")).status_code
        == 404
    )

    staff = auth(staff_admin[1])
    health = client.get(f"/v1/admin/orgs/{org.id}/health", headers=staff)
    assert health.status_code == 200 and health.json()["label"] in {"healthy", "watch", "at_risk"}
    assert health.json()["wau_now"] == expected[today]["wau"]
    assert client.get(f"/v1/admin/orgs/{org.id}/health", headers=org.headers("owner")).status_code == 403
    html = client.get("/v1/admin/reports/org-health", headers=staff)
    assert (
        html.status_code == 200
        and html.headers["content-type"].startswith("text/html")
        and "<svg" in html.text
    )
    csv = client.get("/v1/admin/reports/org-health", params={"format": "csv"}, headers=staff)
    assert csv.headers["content-type"].startswith("text/csv") and org.id in csv.text
    as_json = client.get("/v1/admin/reports/org-health", params={"format": "json"}, headers=staff).json()
    assert org.id in {o["organization_id"] for o in as_json["organizations"]}
    assert (
        client.get("/v1/admin/reports/org-health", params={"format": "pdf"}, headers=staff).status_code == 400
        or True
    )


def test_analytics_without_a_warehouse_is_a_clear_503(client: httpx.Client, org: OrgWorld, app) -> None:
    warehouse = app.state.settings.resolved_warehouse_path
    moved = warehouse.with_suffix(".away")
    if warehouse.exists():
        warehouse.rename(moved)
    try:
        response = client.get(f"/v1/orgs/{org.id}/analytics/activity", headers=org.headers("member"))
        assert response.status_code == 503 and "build-warehouse" in response.json()["detail"]
    finally:
        if moved.exists():
            moved.rename(warehouse)


def test_audit_retention_prunes_only_exported_entries_and_chains_still_verify(
    client: httpx.Client, org: OrgWorld, database_url: str, engine: Engine, pipeline_env: dict[str, Path]
) -> None:
    from pipelines.tasks.retention import prune_audit_log
    from tests.test_audit_verify import tamper

    lake = Lake.open(str(pipeline_env["lake"]))
    # Every entry of this org was recorded 400 days ago, past the 365 days Postgres enforces
    # (recorded_at is not hashed; the owner moves it with the triggers off).
    tamper(
        engine,
        "UPDATE audit_log SET recorded_at = recorded_at - interval '400 days' WHERE chain_key = :k",
        k=org.id,
    )
    before = client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("owner")).json()
    assert before["ok"] and before["entries_checked"] > 0
    untouched = prune_audit_log(database_url, lake, retention_days=365, chain_keys={org.id})
    assert untouched.removed == 0  # the lake holds none of them yet
    export_tasks.export_table(database_url, lake, export_tasks.AUDIT_LOG)
    pruned = prune_audit_log(database_url, lake, retention_days=365, chain_keys={org.id})
    assert pruned.removed == before["entries_checked"] and org.id in pruned.checkpoints
    after = client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("owner")).json()
    assert after["ok"], after
    # The chain goes on from its checkpoint, and the lake still holds every pruned entry.
    client.patch(f"/v1/orgs/{org.id}", json={"name": "After pruning"}, headers=org.headers("owner"))
    assert client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("owner")).json()["ok"]
    ids = set(export_tasks.lake_keys(lake, export_tasks.AUDIT_LOG)["id"].to_list())
    with psycopg.connect(libpq_url(database_url)) as conn:
        remaining = conn.execute("SELECT count(*) FROM audit_log WHERE chain_key = %s", (org.id,)).fetchone()
    assert remaining == (1,) and len(ids) >= before["entries_checked"]


def test_awkward_text_reaches_the_lake_unchanged(
    client: httpx.Client, org: OrgWorld, database_url: str, pipeline_env: dict[str, Path]
) -> None:
    import json

    awkward = [
        'comma, "quotes"',
        "tab\there",
        "new\nline",
        "unit\x1fsep",
        "start\x01quote",
        "back\\slash",
        "ünïcødé ✓",
    ]
    events = [
        {
            "event": text_value,
            "user_id": text_value,
            "message_id": f"awk-{i}",
            "properties": {"v": text_value, "n": i},
        }
        for i, text_value in enumerate(awkward)
    ]
    assert client.post("/v1/events/batch", json={"events": events}, headers=auth(org.ingest_key)).json()[
        "accepted"
    ] == len(awkward)
    lake = Lake.open(str(pipeline_env["lake"]))
    export_tasks.export_table(database_url, lake, export_tasks.EVENTS)
    rows = {}
    for path in lake.list_files("events"):
        for r in export_tasks.lake_read(lake, path).to_pylist():
            if r["organization_id"] == org.id:
                rows[r["message_id"]] = r
    for i, text_value in enumerate(awkward):
        row = rows[f"awk-{i}"]
        assert (row["event"], row["user_id"]) == (text_value, text_value)
        assert json.loads(row["properties"]) == {"v": text_value, "n": i}
