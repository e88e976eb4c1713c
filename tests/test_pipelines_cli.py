"""flows.yaml, `keel flows`, `keel warehouse`, `keel report`, and the report as a person sees it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import Engine

from pipelines.lake import Lake, LakeError
from pipelines.prefect_server import LocalPrefectServer
from pipelines.tasks import export as export_tasks
from tests.harness import LiveServer, auth, make_org
from warehouse.build import build_warehouse

ROOT = Path(__file__).resolve().parents[1]
KEEL = str(Path(sys.executable).with_name("keel"))
PREFECT = str(Path(sys.executable).with_name("prefect"))
OUTPUT = Path(os.environ.get("KEEL_TEST_OUTPUT", ROOT / "test-output"))


def keel(
    *args: str, env: dict[str, str] | None = None, timeout: int = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEEL, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def built_warehouse(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, live_server: LiveServer, engine: Engine
) -> Iterator[Path]:
    """Built once for this module: the tests that take it only read it. The module sends events of
    its own first, so what it reads does not depend on which tests ran before it (or on which worker)."""
    with httpx.Client(base_url=live_server.url) as client:
        world = make_org(client, engine)
        sent = client.post(
            "/v1/events/batch",
            json={"events": [{"event": "cli.check", "user_id": f"u{n}"} for n in range(5)]},
            headers=auth(world.ingest_key),
        )
        assert sent.status_code == 200 and sent.json()["accepted"] == 5, sent.text
    root = tmp_path_factory.mktemp("built-warehouse")
    pipeline_env = {"data": root / "data", "lake": root / "lake", "warehouse": root / "warehouse.duckdb"}
    with pytest.MonkeyPatch.context() as env:  # what `pipeline_env` sets, for the module
        env.setenv("KEEL_DATABASE_URL", database_url)
        env.setenv("KEEL_DATA_DIR", str(pipeline_env["data"]))
        env.setenv("KEEL_LAKE_URL", str(pipeline_env["lake"]))
        env.setenv("KEEL_WAREHOUSE_PATH", str(pipeline_env["warehouse"]))
        yield _build(database_url, pipeline_env)


def _build(database_url: str, pipeline_env: dict[str, Path]) -> Path:
    lake = Lake.open(str(pipeline_env["lake"]))
    export_tasks.write_schemas(lake)
    for table in export_tasks.INCREMENTAL.values():
        export_tasks.export_table(database_url, lake, table)
    for snapshot in export_tasks.SNAPSHOTS.values():
        export_tasks.export_snapshot(database_url, lake, snapshot)
    build_warehouse(str(pipeline_env["lake"]), pipeline_env["warehouse"], as_of=datetime.now(UTC).date())
    return pipeline_env["warehouse"]


def test_flows_yaml_is_accepted_by_prefect_deploy(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    async def create_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="keel", type="process"), overwrite=True)

    asyncio.run(create_pool())
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "KEEL_HOME": str(ROOT)}
    result = subprocess.run([PREFECT, "--no-prompt", "deploy", "--prefect-file", "flows.yaml", "--all"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    declared = {d["name"]: d for d in yaml.safe_load((ROOT / "flows.yaml").read_text())["deployments"]}

    async def deployed() -> dict[str, list[str]]:
        async with get_client() as client:
            found = await client.read_deployments()
            return {d.name: [s.schedule.cron for s in d.schedules] for d in found}  # type: ignore[union-attr]

    schedules = asyncio.run(deployed())
    for name, d in declared.items():
        assert schedules[name] == [s["cron"] for s in d.get("schedules") or []]


def test_keel_flows_list_and_bad_input(tmp_path: Path) -> None:
    # No Prefect server and no Prefect database here: the schedules of flows.yaml, no runs.
    fresh = {"KEEL_DATA_DIR": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    listed = keel("flows", "list", env=fresh)
    assert listed.returncode == 0 and "export-lake" in listed.stdout and "*/15 * * * *" in listed.stdout
    assert "never" in listed.stdout and "no flow has run here yet" in listed.stderr
    unknown = keel("flows", "run", "export-everything")
    assert unknown.returncode == 2 and "no flow named 'export-everything'" in unknown.stderr
    bad_param = keel("flows", "run", "export-lake", "--param", "rows=5")
    assert bad_param.returncode == 2 and "has no parameter rows" in bad_param.stderr
    malformed = keel("flows", "run", "export-lake", "--param", "chunk_rows")
    assert malformed.returncode == 2 and "k=v" in malformed.stderr


def test_flows_run_with_an_unreachable_lake_fails_clearly(
    database_url: str, tmp_path: Path, session_prefect: LocalPrefectServer
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the lake should be")
    env = {"KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(tmp_path / "data"),
           "KEEL_LAKE_URL": str(blocker / "lake"), "PREFECT_API_URL": session_prefect.api_url}  # fmt: skip
    result = keel("flows", "run", "export-lake", env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "flow export-lake failed" in result.stderr and "lake" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[:3000]
    with pytest.raises(LakeError, match="unreachable"):
        Lake.open(str(blocker / "lake"))


def test_flows_run_builds_everything_with_progress(  # type: ignore[no-untyped-def]
    client, org, database_url: str, tmp_path: Path, session_prefect: LocalPrefectServer
) -> None:
    events = [
        {"event": "report.created", "user_id": f"u{i % 4}", "message_id": f"cli-{i}"} for i in range(40)
    ]
    assert (
        client.post("/v1/events/batch", json={"events": events}, headers=auth(org.ingest_key)).json()[
            "accepted"
        ]
        == 40
    )
    env = {"KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(tmp_path / "data"),
           "KEEL_LAKE_URL": str(tmp_path / "lake"), "KEEL_WAREHOUSE_PATH": str(tmp_path / "w.duckdb"),
           "PREFECT_API_URL": session_prefect.api_url}  # fmt: skip
    result = keel("flows", "run", "refresh-analytics", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "flow refresh-analytics completed" in result.stderr and "export events" in result.stderr, (
        result.stdout + result.stderr
    )
    summary = json.loads(result.stdout)
    assert Path(summary["report"]["html"]).is_file() and Path(summary["report"]["csv"]).is_file()
    assert summary["warehouse"]["tables"]["org_health"] >= 1
    assert summary["exported"][0] == {
        "table": "events",
        "rows": summary["exported"][0]["rows"],
        "files": summary["exported"][0]["files"],
        "watermark": summary["exported"][0]["watermark"],
    }
    assert summary["exported"][0]["rows"] >= 40


def test_warehouse_sql_describe_and_report(built_warehouse: Path, tmp_path: Path) -> None:
    env = {"KEEL_WAREHOUSE_PATH": str(built_warehouse)}
    table = keel("warehouse", "sql", "SELECT count(*) AS n FROM org_health", env=env)
    assert table.returncode == 0 and "n" in table.stdout
    as_json = keel(
        "warehouse",
        "sql",
        "SELECT label, count(*) AS n FROM org_health GROUP BY 1",
        "--format",
        "json",
        env=env,
    )
    assert {row["label"] for row in json.loads(as_json.stdout)} <= {"healthy", "watch", "at_risk"}
    csv = keel(
        "warehouse", "sql", "SELECT organization_id, score FROM org_health", "--format", "csv", env=env
    )
    assert csv.stdout.splitlines()[0] == "organization_id,score"
    parquet = tmp_path / "health.parquet"
    assert (
        keel(
            "warehouse",
            "sql",
            "SELECT * FROM org_health",
            "--format",
            "parquet",
            "--out",
            str(parquet),
            env=env,
        ).returncode
        == 0
    )
    assert parquet.stat().st_size > 0
    broken = keel("warehouse", "sql", "SELEKT 1", env=env)
    assert broken.returncode == 1 and "the query failed" in broken.stderr and "Traceback" not in broken.stderr
    no_table = keel("warehouse", "sql", "SELECT * FROM no_such_mart", env=env)
    assert no_table.returncode == 1 and "no_such_mart" in no_table.stderr
    assert keel("warehouse", "sql", "SELECT 1", "--format", "xml", env=env).returncode == 2
    describe = keel("warehouse", "describe", env=env)
    for mart in (
        "org_daily_activity",
        "org_active_users",
        "feature_adoption",
        "seat_utilization",
        "webhook_health",
        "org_health",
    ):
        assert mart in describe.stdout
    assert "one row per organization per UTC day" in describe.stdout
    # The table the docs' examples filter on is in the catalog too, first, with its columns.
    assert describe.stdout.index("keel_params (parameters)") < describe.stdout.index("stg_events")
    assert "as_of" in describe.stdout and "the UTC date the marts are computed for" in describe.stdout
    missing = keel("warehouse", "sql", "SELECT 1", env={"KEEL_WAREHOUSE_PATH": str(tmp_path / "none.duckdb")})
    assert missing.returncode == 1 and "build-warehouse" in missing.stderr
    out = tmp_path / "report.csv"
    assert keel("report", "org-health", "--out", str(out), "--format", "csv", env=env).returncode == 0
    assert out.read_text().startswith("organization_id,name,score,label")


def test_the_warehouse_docs_way_in_with_duckdb_works(built_warehouse: Path) -> None:
    """docs/warehouse.md's DuckDB line runs as written (no `duckdb` shell is installed: it uses the
    Python package that wrote the file)."""
    doc = (ROOT / "docs" / "warehouse.md").read_text()
    assert "duckdb -readonly" not in doc
    (line,) = [line for line in doc.splitlines() if line.startswith(".venv/bin/python -c")]
    argv = shlex.split(line.replace(".keel/warehouse.duckdb", str(built_warehouse)))
    assert argv[0] == ".venv/bin/python" and (ROOT / argv[0]).exists()
    shown = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "score" in shown.stdout and "label" in shown.stdout


def test_the_duckdb_file_opens_in_a_plain_duckdb_client(built_warehouse: Path) -> None:
    import duckdb

    con = duckdb.connect(str(built_warehouse), read_only=True)
    try:
        marts = {r[0] for r in con.execute("SELECT name FROM keel_catalog WHERE kind = 'mart'").fetchall()}
        assert marts == {
            "org_daily_activity",
            "org_active_users",
            "feature_adoption",
            "seat_utilization",
            "webhook_health",
            "org_health",
            "dim_orgs",
            "dim_people",
            "feature_adoption_by_segment",
        }
        assert con.execute("SELECT count(*) FROM stg_events").fetchone()[0] > 0  # views reach the lake
    finally:
        con.close()


def test_the_report_renders_in_a_browser_with_its_charts(built_warehouse: Path, tmp_path: Path) -> None:
    from warehouse import queries
    from warehouse.report import write_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (make test installs it)"
    page = write_report(built_warehouse, tmp_path / "org-health.html", "html")
    assert "http://" not in page.read_text() and "https://" not in page.read_text(), (
        "the page must need no network"
    )
    OUTPUT.mkdir(parents=True, exist_ok=True)
    screenshot = OUTPUT / "org-health-report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1300,1000"]  # fmt: skip
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    organizations = queries.org_health(built_warehouse).height
    assert (
        dom.stdout.count('class="chart wau"') == organizations
    )  # one WAU chart per org, drawn by the browser
    assert dom.stdout.count('class="chart seats"') == organizations
    shot = subprocess.run(
        [chromium, *flags, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=120
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-500:]


def test_every_question_in_the_warehouse_guide_runs(built_warehouse: Path) -> None:
    import duckdb

    guide = (ROOT / "docs" / "warehouse.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", guide, flags=re.S)
    assert len(queries) >= 5
    con = duckdb.connect(str(built_warehouse), read_only=True)
    try:
        for query in queries:
            con.execute(query).fetchall()  # raises on a column or table the guide gets wrong
    finally:
        con.close()
