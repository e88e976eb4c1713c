"""The flows as Prefect deployments on a work pool, as production runs them: `prefect deploy` of
flows.yaml to a process pool on the session's Prefect server, a `prefect worker` subprocess, and
refresh-analytics triggered through its deployment, run by the worker to completion."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb

from pipelines.prefect_server import LocalPrefectServer
from tests.harness import auth

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def test_refresh_analytics_runs_on_a_process_work_pool(  # type: ignore[no-untyped-def]
    client, org, database_url: str, tmp_path: Path, session_prefect: LocalPrefectServer
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    events = [
        {"event": "report.created", "user_id": f"u{i % 3}", "message_id": f"pool-{i}"} for i in range(12)
    ]
    accepted = client.post("/v1/events/batch", json={"events": events}, headers=auth(org.ingest_key))
    assert accepted.json()["accepted"] == 12
    pool = f"keel-test-{uuid.uuid4().hex[:8]}"  # this test's own pool: its worker runs nothing else
    data = tmp_path / "data"
    env = {
        **os.environ,
        "PREFECT_API_URL": session_prefect.api_url,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_LOGGING_LEVEL": "INFO",  # the worker logs each run it submits (the session may set WARNING)
        "KEEL_HOME": str(ROOT),
        "KEEL_DATABASE_URL": database_url,
        "KEEL_DATA_DIR": str(data),
        "KEEL_LAKE_URL": str(tmp_path / "lake"),
        "KEEL_WAREHOUSE_PATH": str(tmp_path / "warehouse.duckdb"),
    }

    with temporary_settings({PREFECT_API_URL: session_prefect.api_url}):

        async def create_pool() -> None:
            async with get_client() as prefect:
                await prefect.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)

        asyncio.run(create_pool())
        deployed = subprocess.run(
            [PREFECT, "--no-prompt", "deploy", "--prefect-file", "flows.yaml", "--name", "refresh-analytics",
             "--pool", pool],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            run = run_deployment("refresh-analytics/refresh-analytics", timeout=0)

            async def state_of() -> str:
                async with get_client() as prefect:
                    found = await prefect.read_flow_run(run.id)
                    return found.state.type.value if found.state else "NONE"

            state = asyncio.run(state_of())
            for _ in range(600):  # the worker picks the run up, a subprocess runs it: until it is final
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(1)
                state = asyncio.run(state_of())
            assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            log.close()
    worker_log = (tmp_path / "worker.log").read_text()
    assert str(run.id) in worker_log
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        org_events = con.execute(
            "SELECT sum(events) FROM org_daily_activity WHERE organization_id = ?", [str(org.id)]
        ).fetchone()
    finally:
        con.close()
    assert org_events == (12,)
    assert (data / "reports" / "org-health.html").is_file()
