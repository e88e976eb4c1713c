"""Webhook records in the lake and the warehouse: real deliveries by a worker to local receivers,
exported, built into ``webhook_health``, and felt in the org health score."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Engine, text

from api.db.engine import libpq_url
from api.settings import Settings
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import OrgWorld, make_org
from tests.hooks import create_endpoint, deliver, publish
from tests.receivers import Receiver, always
from warehouse import queries
from warehouse.build import build_warehouse


def export_all(database_url: str, lake: Lake) -> None:
    export_tasks.write_schemas(lake)
    for snapshot in export_tasks.SNAPSHOTS.values():
        export_tasks.export_snapshot(database_url, lake, snapshot)
    for table in export_tasks.INCREMENTAL.values():
        export_tasks.export_table(database_url, lake, table)


def p95(durations: list[int]) -> int:
    """The nearest-rank 95th percentile: the ceil(0.95 n)-th smallest value."""
    ranked = sorted(durations)
    return ranked[-(-95 * len(ranked) // 100) - 1]


def expected_health(engine: Engine, org_id: str) -> dict[tuple[str, Any], dict[str, Any]]:
    """``webhook_health`` computed in Python from Postgres's own attempt rows."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT endpoint_id::text, started_at, duration_ms, status_code, error_class"
                " FROM webhook_attempts WHERE organization_id = :o"
            ),
            {"o": org_id},
        ).all()
    groups: dict[tuple[str, Any], list[Any]] = defaultdict(list)
    for row in rows:
        groups[(row.endpoint_id, row.started_at.astimezone(UTC).date())].append(row)
    expected = {}
    for key, attempts in groups.items():
        ok = [a for a in attempts if a.status_code is not None and 200 <= a.status_code <= 299]
        errors = Counter(a.error_class or f"http_{a.status_code}" for a in attempts if a not in ok)
        expected[key] = {
            "attempts": len(attempts),
            "succeeded": len(ok),
            "failed": len(attempts) - len(ok),
            "success_rate": len(ok) / len(attempts),
            "p95_latency_ms": p95([a.duration_ms for a in attempts]),
            "timeouts": sum(a.error_class == "timeout" for a in attempts),
            "top_error": max(errors, key=lambda e: (errors[e], e)) if errors else None,
        }
    return expected


async def test_webhook_attempts_reach_the_lake_the_mart_and_the_health_score(
    hooks_client: httpx.Client,
    engine: Engine,
    hooks_settings: Settings,
    database_url: str,
    tmp_path: Path,
) -> None:
    world = make_org(hooks_client, engine, roles=("owner",))
    quiet = make_org(hooks_client, engine, roles=("owner",))
    with Receiver(always(200)) as good, Receiver(always(500)) as bad, Receiver(always(410)) as gone:
        endpoints = {
            "good": create_endpoint(hooks_client, world, f"{good.url}?token=s3cret"),
            "bad": create_endpoint(hooks_client, world, bad.url),
            "gone": create_endpoint(hooks_client, world, gone.url),
        }
        for n in range(6):
            publish(hooks_client, world, "member.added" if n % 2 else "invoice.paid", {"n": n})
        await deliver(hooks_settings, world.id)
    schedule = len(hooks_settings.webhook_retry_schedule)
    # The 410 disabled its endpoint, which told the org's other endpoints (webhook.endpoint_disabled).
    # Messages already in flight to the 410 endpoint when it answered were sent; later ones parked.
    assert len(good.arrivals) == 7 and len(bad.arrivals) == 7 * schedule and 1 <= len(gone.arrivals) <= 6
    total = 7 + 7 * schedule + len(gone.arrivals)

    lake = Lake.open(str(tmp_path / "lake"))
    export_all(database_url, lake)
    export_all(database_url, lake)  # a second run adds nothing
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(lake.url, warehouse)

    mart = queries.sql(warehouse, f"SELECT * FROM webhook_health WHERE organization_id = '{world.id}'")
    got = {
        (r["endpoint_id"], r["day"]): {k: r[k] for k in ("attempts", "succeeded", "failed", "success_rate",
                                                          "p95_latency_ms", "timeouts", "top_error")}
        for r in mart.iter_rows(named=True)
    }  # fmt: skip
    assert got == expected_health(engine, world.id)
    by_endpoint = {r["endpoint_id"]: r for r in mart.iter_rows(named=True)}
    assert by_endpoint[endpoints["bad"]["id"]]["top_error"] == "http_500"
    assert by_endpoint[endpoints["gone"]["id"]]["top_error"] == "http_410"
    # The receiver's token stays out of the lake; the secret never leaves Postgres.
    assert by_endpoint[endpoints["good"]["id"]]["url"] == good.url
    snapshot = queries.sql(warehouse, "SELECT * FROM stg_webhook_endpoints")
    assert "secret" not in snapshot.columns
    assert not any("s3cret" in str(v) for row in snapshot.iter_rows() for v in row)
    attempts = queries.sql(
        warehouse, f"SELECT * FROM stg_webhook_attempts WHERE organization_id = '{world.id}'"
    )
    assert attempts.height == total and attempts["attempt_id"].n_unique() == total
    assert set(attempts["event_type"]) == {"member.added", "invoice.paid", "webhook.endpoint_disabled"}

    health = {r["organization_id"]: r for r in queries.org_health(warehouse).iter_rows(named=True)}
    rate = 7 / total
    assert health[world.id]["webhook_attempts_7d"] == total
    assert type(health[world.id]["webhook_attempts_7d"]) is int  # an integer in JSON, not a decimal
    assert abs(health[world.id]["webhook_success_rate_7d"] - rate) < 1e-9
    assert health[world.id]["webhook_endpoints_disabled_30d"] == 1
    assert (
        f"Only {100 * rate:.0f}% of {total} webhook attempts succeeded in the last 7 days."
        in (health[world.id]["reasons"])
    )
    assert "1 webhook endpoint(s) disabled in the last 30 days." in health[world.id]["reasons"]
    assert not any("webhook" in reason for reason in health[quiet.id]["reasons"])
    assert health[quiet.id]["webhook_success_rate_7d"] is None


def test_an_attempt_numbered_earlier_but_committed_later_is_not_skipped(
    hooks_client: httpx.Client, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """Attempt numbers are drawn inside the export fence (the column's default takes it, so this
    plain insert does too); the exporter waits for it."""
    world: OrgWorld = make_org(hooks_client, engine, roles=("owner",))
    endpoint = create_endpoint(hooks_client, world, "https://hooks.example.com/in")
    publish(hooks_client, world, "member.added", {})
    lake = Lake.open(str(tmp_path / "lake"))
    table = export_tasks.APPEND_ONLY["webhook_attempts"]
    export_tasks.export_table(database_url, lake, table)
    with engine.connect() as conn:
        delivery = conn.execute(
            text("SELECT id FROM webhook_deliveries WHERE endpoint_id = :e"), {"e": endpoint["id"]}
        ).scalar_one()

    def insert_attempt(conn: psycopg.Connection[Any], n: int) -> None:
        conn.execute(
            "INSERT INTO webhook_attempts (id, organization_id, endpoint_id, delivery_id, attempt_number,"
            " started_at, duration_ms, status_code) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, 5, 200)",
            (world.id, endpoint["id"], delivery, n, datetime.now(UTC)),
        )

    url = libpq_url(database_url)
    with psycopg.connect(url) as slow, psycopg.connect(url) as fast:
        insert_attempt(slow, 1)  # numbered first, still open
        insert_attempt(fast, 2)
        fast.commit()
        exported: list[int] = []
        exporter = threading.Thread(
            target=lambda: exported.append(export_tasks.export_table(database_url, lake, table).rows)
        )
        exporter.start()
        time.sleep(1.0)
        assert exporter.is_alive() and not exported  # waiting at the fence, not exporting past it
        slow.commit()
        exporter.join(30)
    assert exported == [2]
    keys = export_tasks.lake_keys(lake, table)
    assert keys.height == keys["id"].n_unique()
    with engine.connect() as conn:
        ids = {str(i) for i in conn.execute(text("SELECT id FROM webhook_attempts")).scalars()}
    assert set(keys["id"]) == ids
