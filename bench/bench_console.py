"""The staff console's page times: p50 and p95 of each page with the demo data (target: p95 under
200 ms), beside the same server's JSON admin view of the same org (`GET /v1/admin/orgs/{id}`, a
staff token) and `GET /health`, measured in the same run.

It starts its own embedded Postgres in a temporary directory, seeds the demo (four organizations,
285 members, sixty days of events), exports the lake and builds the warehouse in-process (so the
health panels and the DAU/WAU chart have data), then serves the API with `keel serve` on a port
chosen at run time and signs in to the console with a one-time link, as staff do. Requests are
sequential (one browser): every page is read `KEEL_BENCH_CONSOLE_ROUNDS` times (default 60)
after a warm-up.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from harness import private_postgres, served_api

from api.console.sessions import create_link
from api.db.engine import run_in_session
from api.demo import seed
from api.settings import Settings

ROUNDS = int(os.environ.get("KEEL_BENCH_CONSOLE_ROUNDS", "60"))
WARMUP = 5
TARGET_P95_MS = 200.0


def say(text: str) -> None:
    print(text, flush=True)


def times(client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> list[float]:
    """Milliseconds per request, each answer checked."""
    found = []
    for i in range(WARMUP + ROUNDS):
        began = time.perf_counter()
        response = client.get(path, headers=headers)
        elapsed = (time.perf_counter() - began) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        if i >= WARMUP:
            found.append(elapsed)
    return found


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    from pipelines.lake import Lake
    from pipelines.tasks import export as export_tasks
    from warehouse.build import build_warehouse

    with private_postgres() as url, tempfile.TemporaryDirectory(prefix="keel-bench-console-") as work:
        summary = seed(url)
        assert summary.admin_token is not None
        lake_dir, warehouse = Path(work) / "lake", Path(work) / "warehouse.duckdb"
        lake = Lake.open(str(lake_dir))
        export_tasks.write_schemas(lake)
        for table in export_tasks.INCREMENTAL.values():
            export_tasks.export_table(url, lake, table)
        for snapshot in export_tasks.SNAPSHOTS.values():
            export_tasks.export_snapshot(url, lake, snapshot)
        build_warehouse(str(lake_dir), warehouse)
        admin_email = summary.admin_email
        secret, _ = run_in_session(url, lambda s: create_link(s, email=admin_email, settings=Settings()))
        orgs = {slug: info["id"] for slug, info in summary.orgs.items()}
        member_email = f"user1@{next(iter(summary.orgs))}.example"  # the demo's member addresses
        env = {"KEEL_WAREHOUSE_PATH": str(warehouse), "KEEL_LAKE_URL": str(lake_dir)}
        with served_api(url, **env) as (base, _), httpx.Client(base_url=base, timeout=30) as client:
            assert client.get(f"/console/login/{secret}").status_code == 200
            staff = {"Authorization": f"Bearer {summary.admin_token}"}
            pages: dict[str, list[float]] = {
                "search (empty)": times(client, "/console"),
                "search by member email": times(client, f"/console?q={member_email}"),
                "health": times(client, "/console/health"),
            }
            for slug, org_id in orgs.items():
                pages[f"org 360 ({slug})"] = times(client, f"/console/orgs/{org_id}")
            biggest = orgs[max(summary.orgs, key=lambda slug: summary.orgs[slug]["members"])]
            baselines = {
                "GET /v1/admin/orgs/{id} (JSON)": times(client, f"/v1/admin/orgs/{biggest}", staff),
                "GET /health": times(client, "/health"),
            }
    say(f"console page times, {ROUNDS} sequential requests each (demo data, warehouse built):")
    worst = 0.0
    for name, values in {**pages, **baselines}.items():
        tail = p95(values)
        if name in pages:
            worst = max(worst, tail)
        say(f"  {name:<36} p50 {statistics.median(values):7.1f} ms   p95 {tail:7.1f} ms")
    verdict = "meets" if worst < TARGET_P95_MS else "MISSES"
    say(f"worst console p95 {worst:.1f} ms: {verdict} the {TARGET_P95_MS:.0f} ms target")


if __name__ == "__main__":
    main()
