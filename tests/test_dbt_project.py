"""The warehouse as a dbt project: its generated parts match their one definitions, its tests
cover every key, foreign key and enumerated column, a failed dbt test fails the flow (its name and
rows in the flow's log) and keeps the previous warehouse, and a reader open across a rebuild keeps
reading."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from api.audit.models import ActorType
from api.billing.models import (
    DiscrepancyKind,
    ReconciliationRunStatus,
    Severity,
    SubscriptionStatus,
    UsageSource,
)
from api.members.models import MembershipStatus, OrgRole
from api.orgs.models import OrgStatus
from api.webhooks.models import InboundStatus
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import write_lake_rows as write_rows
from warehouse import dbt_project
from warehouse.build import BUILDING_FILE, WarehouseError, build_warehouse, check_columns
from warehouse.lake_tables import DUCKDB_TYPES, LAKE_TABLES
from warehouse.models import MODELS_DIR, Model, load_models

AS_OF = date(2026, 3, 10)


def schema_entries() -> dict[str, dict[str, Any]]:
    entries = {}
    for path in MODELS_DIR.rglob("schema.yml"):
        for m in yaml.safe_load(path.read_text())["models"]:
            entries[m["name"]] = m
    return entries


def column_tests(entry: dict[str, Any], column: str) -> list[Any]:
    return next(c for c in entry["columns"] if c["name"] == column).get("data_tests", [])


def test_the_generated_sources_and_rule_macros_match_their_one_definition() -> None:
    """``_sources.yml`` is lake_tables.py's list, ``keel_rules.sql`` is rules.py's: regenerate
    with ``python -m warehouse.dbt_project`` when this fails."""
    assert dbt_project.stale() == []
    declared = yaml.safe_load(dbt_project.SOURCES_FILE.read_text())["sources"][0]
    assert {t["name"]: [(c["name"], c["data_type"]) for c in t["columns"]] for t in declared["tables"]} == {
        name: [(c.name, DUCKDB_TYPES[c.kind]) for c in table.columns] + [("filename", "VARCHAR")]
        for name, table in LAKE_TABLES.items()
    }
    for model in load_models():
        assert model.sources <= set(LAKE_TABLES), model.name


def test_every_model_key_is_tested_unique_and_not_null() -> None:
    entries = schema_entries()
    for model in load_models():
        if not model.key:
            continue
        entry = entries[model.name]
        for column in model.key:
            assert "not_null" in column_tests(entry, column), (model.name, column)
        if len(model.key) == 1:
            assert "unique" in column_tests(entry, model.key[0]), model.name
        else:
            assert {"keel_unique_key": {"arguments": {"columns": list(model.key)}}} in entry["data_tests"]


def test_every_mart_organization_is_a_known_organization_and_enumerations_match_the_api() -> None:
    entries = schema_entries()
    to_orgs = {"relationships": {"arguments": {"to": "ref('stg_organizations')", "field": "organization_id"}}}
    for model in load_models():
        # A mart by organization names known organizations (a mart by segment has no organization).
        if model.kind == "mart" and "organization_id" in model.columns:
            assert to_orgs in column_tests(entries[model.name], "organization_id"), model.name
    enums = {
        ("stg_audit_log", "actor_type"): ActorType,
        ("stg_organizations", "status"): OrgStatus,
        ("dim_orgs", "status"): OrgStatus,
        ("stg_subscriptions", "status"): SubscriptionStatus,
        ("int_current_subscriptions", "status"): SubscriptionStatus,
        ("stg_billing_reconciliation_runs", "status"): ReconciliationRunStatus,
        ("stg_billing_reconciliation_runs", "usage_source"): UsageSource,
        ("stg_billing_discrepancies", "kind"): DiscrepancyKind,
        ("stg_billing_discrepancies", "severity"): Severity,
        ("stg_memberships", "role"): OrgRole,
        ("stg_memberships", "status"): MembershipStatus,
        ("stg_inbound_events", "status"): InboundStatus,
    }
    for (model, column), enum in enums.items():
        accepted = [
            t["accepted_values"]["arguments"]["values"]
            for t in column_tests(entries[model], column)
            if isinstance(t, dict) and "accepted_values" in t
        ]
        assert accepted == [[e.value for e in enum]], (model, column)


# -- a small lake written by hand, as the exporter lays it out ---------------------------------------


def small_lake(root: Path, *, role: str = "member") -> tuple[Path, str]:
    lake = root / "lake"
    export_tasks.write_schemas(Lake.open(str(lake)))
    org = str(uuid.uuid4())
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    day = "snapshot_date=2026-03-10"
    write_rows(
        lake,
        "organizations",
        [{"id": org, "name": "Acme", "slug": "acme", "status": "active", "created_at": at}],
        day,
    )
    write_rows(
        lake,
        "memberships",
        [{"id": str(uuid.uuid4()), "organization_id": org, "user_id": str(uuid.uuid4()), "role": role,
          "status": "active", "created_at": at, "updated_at": at}],
        day,
    )  # fmt: skip
    write_rows(
        lake,
        "events",
        [{"ingest_seq": 1, "organization_id": org, "message_id": "m1", "event": "report.exported", "user_id": "u1",
          "timestamp": at, "received_at": at}],
        "date=2026-03-01",
    )  # fmt: skip
    return lake, org


def test_a_failed_dbt_test_names_itself_and_its_rows_and_keeps_the_previous_warehouse(tmp_path: Path) -> None:
    lake, _ = small_lake(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    built = build_warehouse(str(lake), warehouse, as_of=AS_OF)
    assert built.tables["org_daily_activity"] == 10
    first = duckdb.connect(str(warehouse), read_only=True)
    try:
        built_at = first.execute("SELECT built_at FROM keel_params").fetchone()
    finally:
        first.close()
    # A role no Keel version writes: the accepted_values test of stg_memberships.role fails.
    small_lake(tmp_path, role="overlord")
    with pytest.raises(WarehouseError) as failed:
        build_warehouse(str(lake), warehouse, as_of=AS_OF)
    assert "accepted_values_stg_memberships_role" in str(failed.value)
    assert "overlord" in str(failed.value)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:  # the previous warehouse, whole
        assert con.execute("SELECT built_at FROM keel_params").fetchone() == built_at
        assert con.execute("SELECT count(*) FROM org_daily_activity").fetchone() == (10,)
    finally:
        con.close()
    assert not (warehouse.with_name(f".{warehouse.name}.dbt") / BUILDING_FILE).exists()


def test_the_flow_fails_with_the_failed_test_in_its_log(
    pipeline_env: dict[str, Path], prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from pipelines import progress
    from pipelines.flows import build_warehouse_flow

    small_lake(tmp_path / "x", role="overlord")
    pipeline_env["lake"].parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "x" / "lake").rename(pipeline_env["lake"])
    steps: list[tuple[str, int, int | None]] = []
    progress.set_reporter(lambda step, done, total: steps.append((step, done, total)))
    try:
        state = build_warehouse_flow(as_of=AS_OF.isoformat(), return_state=True)
    finally:
        progress.set_reporter(None)
    assert state.is_failed()
    # Each model dbt finished was progress, before the test that failed.
    total = len(load_models())
    assert [s for s in steps if s[0] == "build warehouse (dbt)"][:3] == [
        ("build warehouse (dbt)", n, total) for n in (1, 2, 3)
    ]

    async def logs() -> list[str]:
        async with get_client() as client:
            found = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            )
            return [entry.message for entry in found]

    messages = ""
    for _ in range(50):  # the log handler sends in batches: until the flow's error is there
        messages = "\n".join(asyncio.run(logs()))
        if "accepted_values" in messages:
            break
        time.sleep(0.2)
    assert "dbt test accepted_values_stg_memberships_role" in messages
    assert "value_field=overlord" in messages
    assert not pipeline_env["warehouse"].exists()


def test_documented_columns_are_the_real_ones(tmp_path: Path) -> None:
    lake, _ = small_lake(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(str(lake), warehouse, as_of=AS_OF)
    models = load_models()
    con = duckdb.connect(str(warehouse))
    try:
        check_columns(con, models)  # as built: every column documented, no other
        mart = next(m for m in models if m.name == "org_daily_activity")
        ghost = Model(**{**mart.__dict__, "columns": {**mart.columns, "ghost": "a column no SQL makes"}})
        with pytest.raises(
            WarehouseError, match="org_daily_activity documents columns it does not have: ghost"
        ):
            check_columns(con, [ghost])
        silent = Model(
            **{**mart.__dict__, "columns": {k: v for k, v in mart.columns.items() if k != "events"}}
        )
        with pytest.raises(WarehouseError, match="org_daily_activity has undocumented columns: events"):
            check_columns(con, [silent])
        catalog = dict(
            con.execute(
                "SELECT column_name, description FROM keel_columns WHERE table_name = 'org_daily_activity'"
            ).fetchall()
        )
        assert catalog == mart.columns
    finally:
        con.close()


READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
for line in sys.stdin:  # one query per line, until stdin closes
    print(con.execute(line).fetchall(), flush=True)
"""


def test_a_reader_open_across_a_rebuild_keeps_reading(tmp_path: Path) -> None:
    """An analyst's read-only session (another process, as the duckdb CLI or a notebook is) opened
    before a rebuild keeps reading the warehouse it opened; one opened after reads the new one
    (docs/warehouse.md, "Reading while the app runs")."""
    lake, _ = small_lake(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(str(lake), warehouse, as_of=date(2026, 3, 5))
    query = "SELECT count(*), CAST(max(day) AS VARCHAR) FROM org_daily_activity\n"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(warehouse)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdin and reader.stdout
        reader.stdin.write(query)
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "[(5, '2026-03-05')]"
        build_warehouse(str(lake), warehouse, as_of=AS_OF)  # while it is open
        reader.stdin.write(query)
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "[(5, '2026-03-05')]"
        fresh = subprocess.run(
            [sys.executable, "-c", READER, str(warehouse)],
            input=query,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fresh.stdout.strip() == "[(10, '2026-03-10')]", fresh.stderr
    finally:
        if reader.stdin:
            reader.stdin.close()
        reader.wait(timeout=30)


def test_every_past_day_uses_that_days_members_and_seats(tmp_path: Path) -> None:
    """Members join, are activated and removed and seats change over ten simulated days, with a
    daily snapshot exported at each day's end (none on two quiet days); every day of
    seat_utilization equals the figures computed here from the changes themselves."""
    lake = tmp_path / "lake"
    export_tasks.write_schemas(Lake.open(str(lake)))
    org = str(uuid.uuid4())
    days = [date(2026, 3, d) for d in range(1, 11)]
    at = {d: datetime(d.year, d.month, d.day, 9, tzinfo=UTC) for d in days}
    write_rows(
        lake,
        "organizations",
        [{"id": org, "name": "Acme", "slug": "acme", "status": "active", "created_at": at[days[0]]}],
        "snapshot_date=2026-03-01",
    )
    # What happens, day by day: (membership, status) changes, and the seat count bought.
    changes: dict[date, dict[str, str]] = {
        days[0]: {"m1": "active", "m2": "active", "m3": "invited"},
        days[3]: {"m4": "active"},
        days[4]: {"m3": "active", "m5": "invited"},
        days[7]: {"m1": "removed"},
        days[8]: {"m5": "active", "m2": "removed"},
    }
    seats = {days[0]: 5, days[4]: 8, days[7]: 3}
    quiet = {days[2], days[6]}  # no export ran: no snapshot that day (and nothing changed)
    ids = {f"m{i}": str(uuid.uuid4()) for i in range(1, 6)}
    created: dict[str, datetime] = {}
    state: dict[str, str] = {}
    seat_count = 0
    expected_members, expected_seats = {}, {}
    for day in days:
        for member, status in changes.get(day, {}).items():
            created.setdefault(member, at[day])
            state[member] = status
        seat_count = seats.get(day, seat_count)
        expected_members[day] = sum(s == "active" for s in state.values())
        expected_seats[day] = seat_count
        if day in quiet:
            continue
        part = f"snapshot_date={day.isoformat()}"
        write_rows(
            lake,
            "memberships",
            [{"id": ids[m], "organization_id": org, "user_id": f"user-{m}", "role": "member", "status": s,
              "created_at": created[m], "updated_at": at[day]} for m, s in state.items()],
            part,
        )  # fmt: skip
        write_rows(
            lake,
            "subscriptions",
            [{"id": ids["m1"], "organization_id": org, "stripe_subscription_id": "sub_now", "status": "active",
              "seats": seat_count, "unit_amount": 1000, "currency": "usd", "created_at": at[days[0]]},
             # An older, ended subscription with more seats: the rule never picks it.
             {"id": ids["m2"], "organization_id": org, "stripe_subscription_id": "sub_old", "status": "canceled",
              "seats": 50, "unit_amount": 1000, "currency": "usd", "created_at": at[days[1]]}],
            part,
        )  # fmt: skip
    # Users' activity: u1 every day, u2 on the 3rd, u3 on the 6th and 9th.
    active_on = {"u1": set(days), "u2": {days[2]}, "u3": {days[5], days[8]}}
    events = [
        {"ingest_seq": n, "organization_id": org, "message_id": f"e{n}", "event": "page.viewed", "user_id": user,
         "timestamp": at[day], "received_at": at[day]}
        for n, (user, day) in enumerate(sorted((u, d) for u, ds in active_on.items() for d in ds))
    ]  # fmt: skip
    write_rows(lake, "events", events, "date=2026-03-01")
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(str(lake), warehouse, as_of=days[-1])
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(
            "SELECT day, active_members, seats_purchased, active_users, utilization FROM seat_utilization"
            " WHERE organization_id = ? ORDER BY day",
            [org],
        ).fetchall()
        current = con.execute(
            "SELECT seats FROM int_current_subscriptions WHERE organization_id = ?", [org]
        ).fetchone()
        adoption = con.execute(
            "SELECT active_members FROM feature_adoption WHERE organization_id = ?", [org]
        ).fetchone()
    finally:
        con.close()
    expected = []
    for day in days:
        mau = sum(any(0 <= (day - d).days < 30 for d in ds) for ds in active_on.values())
        expected.append((day, expected_members[day], expected_seats[day], mau, mau / expected_seats[day]))
    assert rows == expected
    assert current == (3,)
    assert adoption == (expected_members[days[-1]],)


def test_a_copy_of_the_warehouse_under_another_name_reads_its_views(tmp_path: Path) -> None:
    """The consistent copy docs/warehouse.md suggests: staging views name no database, so they
    read the copy's own tables."""
    lake, org = small_lake(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(str(lake), warehouse, as_of=AS_OF)
    copy = tmp_path / "analysis-copy.duckdb"
    copy.write_bytes(warehouse.read_bytes())
    con = duckdb.connect(str(copy), read_only=True)
    try:
        assert con.execute("SELECT organization_id FROM stg_organizations").fetchall() == [(org,)]
        assert con.execute("SELECT count(*) FROM int_active_members").fetchone() == (1,)
    finally:
        con.close()


def test_a_relative_warehouse_path_builds_beside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`KEEL_WAREHOUSE_PATH` defaults to `.keel/warehouse.duckdb`, relative to where `keel dev` runs
    (dbt would read a relative target path from its project directory)."""
    lake, _ = small_lake(tmp_path)
    monkeypatch.chdir(tmp_path)
    built = build_warehouse(str(lake), Path(".keel/warehouse.duckdb"), as_of=AS_OF)
    assert built.path == tmp_path / ".keel" / "warehouse.duckdb"
    assert (tmp_path / ".keel" / ".warehouse.duckdb.dbt" / "target" / "manifest.json").is_file()
    assert not list(dbt_project.PROJECT_DIR.glob(".keel*"))


def test_the_warehouse_guide_lists_every_model_with_its_kind() -> None:
    """docs/warehouse.md's tables name every model of the dbt project, under its kind's heading."""
    guide = (dbt_project.PROJECT_DIR.parents[1] / "docs" / "warehouse.md").read_text()
    sections = {
        "staging": guide.split("## Staging views")[1].split("\n## ")[0],
        "intermediate": guide.split("## Intermediate models")[1].split("\n## ")[0],
        "mart": guide.split("## Marts")[1].split("\n## ")[0],
    }
    for model in load_models():
        if model.kind in sections:
            assert f"| `{model.name}` |" in sections[model.kind], model.name
