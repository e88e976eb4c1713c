"""`keel flows serve` really runs the schedules: a real Prefect server (with its scheduler) started
for this test, a real `keel flows serve --schedule …` subprocess, real scheduled flow runs that
export new events to a real lake, and `keel flows list` reading the runs back from Prefect."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines.prefect_server import LocalPrefectServer, child_process, start_local_server, stop_process
from tests.harness import auth

ROOT = Path(__file__).resolve().parents[1]
KEEL = str(Path(sys.executable).with_name("keel"))
#: Generous: the machine is shared, and each flow run is a fresh Python process.
WAIT_SECONDS = 300


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrefectServer]:
    home = tmp_path_factory.mktemp("prefect-home")
    server = start_local_server(home, home / "server.log")
    yield server
    server.stop()


def flow_runs(api_url: str, flow_name: str) -> list[Any]:
    """The flow's runs, read through Prefect's own client."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))

    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(read())


def wait_for(check: Any, what: str, log: Path) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; serve log:\n{log.read_text()[-4000:]}")


def lake_message_ids(lake: Path) -> set[str]:
    files = list((lake / "events").glob("date=*/*.parquet"))
    if not files:
        return set()
    con = duckdb.connect()
    try:
        rows = con.execute("SELECT message_id FROM read_parquet(?)", [[str(f) for f in files]]).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def send_events(client: Any, key: str, prefix: str, n: int = 5) -> set[str]:
    ids = {f"{prefix}-{i}" for i in range(n)}
    events = [{"event": "report.created", "user_id": "u1", "message_id": m} for m in sorted(ids)]
    assert client.post("/v1/events/batch", json={"events": events}, headers=auth(key)).json()["accepted"] == n
    return ids


def test_scheduled_runs_happen_export_new_events_and_show_in_flows_list(  # type: ignore[no-untyped-def]
    client, org, database_url: str, prefect_server: LocalPrefectServer, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the warehouse's directory should be")
    env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(tmp_path / "data"),
           "KEEL_LAKE_URL": str(lake), "KEEL_WAREHOUSE_PATH": str(blocker / "w.duckdb"),
           "PREFECT_API_URL": prefect_server.api_url, "PREFECT_HOME": str(tmp_path / "prefect")}  # fmt: skip
    before = send_events(client, org.ingest_key, "sched-before")
    log_path = tmp_path / "serve.log"
    with log_path.open("ab") as log:
        serve = child_process(
            [KEEL, "flows", "serve", "--schedule", "export-lake=20s", "--schedule", "build-warehouse=30s"],
            env=env, log=log,
        )  # fmt: skip
    try:

        def scheduled_completed() -> list[Any]:
            runs = flow_runs(prefect_server.api_url, "export-lake")
            return [r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()]

        first = wait_for(scheduled_completed, "a scheduled export-lake run", log_path)
        assert before <= lake_message_ids(lake), "the first scheduled run exported the events sent before it"
        after = send_events(client, org.ingest_key, "sched-after")
        done = {r.id for r in first}
        newer = wait_for(
            lambda: [r for r in scheduled_completed() if r.id not in done], "a second scheduled run", log_path
        )
        assert newer[0].deployment_id == first[0].deployment_id
        assert after <= lake_message_ids(lake), (
            "the second scheduled run exported the events sent after the first"
        )

        # A scheduled run that fails: logged with its error by the serve, visible in `flows list`.
        def failed_build() -> list[Any]:
            runs = flow_runs(prefect_server.api_url, "build-warehouse")
            return [r for r in runs if r.auto_scheduled and r.state and r.state.is_failed()]

        failure = wait_for(failed_build, "a failed build-warehouse run", log_path)[0]
        assert failure.state.message
        listed = subprocess.run([KEEL, "flows", "list", "--json"], capture_output=True, text=True, env=env,
                                cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        rows = {row["flow"]: row for row in json.loads(listed.stdout)}
        export = rows["export-lake"]
        assert export["schedule"] == "every 20s" and export["declared_schedule"] == "*/15 * * * *"
        assert export["last_run"]["state"] in {"Completed", "Running"}
        assert export["next_run"] is not None and export["paused"] is False
        assert export["runs"]["scheduled"] >= 2 and export["runs"]["by_hand"] == 0
        build = rows["build-warehouse"]
        assert build["last_run"]["state"] in {"Failed", "Running"}
        assert rows["retention"]["schedule"] == "0 3 * * *" and rows["retention"]["next_run"] is not None
        assert rows["refresh-analytics"]["schedule"] == "on demand"
        table = subprocess.run([KEEL, "flows", "list"], capture_output=True, text=True, env=env, cwd=ROOT,
                               timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
        assert "every 20s" in table.stdout and "Completed" in table.stdout, table.stdout
        assert "runs read from the Prefect API" in table.stderr
    finally:
        stop_process(serve, timeout=60)  # SIGTERM; SIGKILL only if it has not stopped by itself
    log_text = log_path.read_text()
    assert serve.returncode == 0, log_text[-3000:]  # it stopped by itself, not killed
    assert "flow schedules stopped" in log_text
    assert "SystemExit" not in log_text and "received 1012" not in log_text, log_text[-3000:]
    # The failing run's error is in the serve's log, with what failed.
    assert "Finished in state Failed" in log_text and "build-warehouse" in log_text
    # After the serve, the schedules are paused: `flows list` says so rather than promising a run.
    listed = subprocess.run([KEEL, "flows", "list", "--json"], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    export = {row["flow"]: row for row in json.loads(listed.stdout)}["export-lake"]
    assert export["paused"] is True and export["next_run"] is None


def test_schedule_overrides_are_checked_before_anything_starts(tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path)}
    for value, message in [
        ("nope=20s", "no flow named 'nope'"),
        ("export-lake=soon", "neither an interval"),
        ("export-lake", "is not NAME=EVERY"),
        ("export-lake=0s", "at least 1s"),
    ]:
        result = subprocess.run([KEEL, "flows", "serve", "--schedule", value], capture_output=True, text=True,
                                env=env, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, (value, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "prefect" / "keel-server.json").exists()
