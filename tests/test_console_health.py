"""The console's warehouse-backed panels with a real warehouse: the Org 360 health score, its
reasons and the DAU/WAU chart (server-drawn SVG, with the numbers as a table), the health page's
rows, trend words and at-risk filter, and the health label in search results."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from api.app import create_app
from api.auth.models import PlatformRole
from api.settings import Settings
from tests.console_support import console_session, email_of
from tests.harness import LiveServer, OrgWorld, audit_rows, make_org, make_user
from tests.test_pipelines_cli import _build


@pytest.fixture
def built_warehouse(
    database_url: str, client: httpx.Client, engine: Engine, tmp_path: Path
) -> Iterator[tuple[OrgWorld, Path]]:
    """An org with two weeks of events from three users, exported and built into a warehouse."""
    world = make_org(client, engine, roles=("owner", "member"))
    now = datetime.now(UTC)
    events = [
        {"event": "report.viewed", "user_id": f"user-{u}", "message_id": f"{world.id}-{d}-{u}",
         "timestamp": (now - timedelta(days=d)).isoformat()}
        for d in range(14) for u in range(3) if (d + u) % 2 == 0
    ]  # fmt: skip
    sent = client.post(
        "/v1/events/batch", json={"events": events}, headers={"Authorization": f"Bearer {world.ingest_key}"}
    )
    assert sent.status_code < 300, sent.text
    paths = {"data": tmp_path / "data", "lake": tmp_path / "lake", "warehouse": tmp_path / "warehouse.duckdb"}
    yield world, _build(database_url, paths)


def test_health_panels_read_the_warehouse(
    built_warehouse: tuple[OrgWorld, Path], settings: Settings, engine: Engine, client: httpx.Client
) -> None:
    world, warehouse = built_warehouse
    _, token = make_user(engine, platform_role=PlatformRole.support)
    served = settings.with_(warehouse_path=warehouse)
    with LiveServer(create_app(served)) as server:
        session, _ = console_session(server.url, served, email_of(client, token))
        with contextlib.closing(session):
            page = session.get(f"/console/orgs/{world.id}").text
            health = session.get("/console/health").text
            at_risk = session.get("/console/health", params={"at_risk": "true"}).text
            found = session.get("/console", params={"q": world.slug}).text
    section = page[page.index('id="health"') : page.index('id="flags"')]
    score = re.search(r"score <strong>(\d+)</strong> / 100", section)
    assert score, section[:2000]
    assert re.search(r'<svg class="chart"[^>]*role="img"', section)
    paths = re.findall(r'<path d="(M[^"]+)" class="(dau|wau)"/>', section)
    assert {kind for _, kind in paths} == {"dau", "wau"}
    assert all(d.count("L") >= 10 for d, _ in paths)  # one point per day of activity
    days = re.findall(r"<tr><td>(\d{4}-\d{2}-\d{2})</td><td>(\d+)</td><td>(\d+)</td></tr>", section)
    assert len(days) >= 10 and max(int(dau) for _, dau, _ in days) >= 1
    assert audit_rows(engine, organization_id=world.id, action="staff.health_viewed")
    # The health page lists the org with its score; the at-risk filter keeps only at-risk orgs.
    row = re.search(
        rf'<a href="/console/orgs/{world.id}">[^<]+</a></td>\s*<td>(\d+)</td>\s*<td><span class="label label-(\w+)"',
        health,
    )
    assert row and row.group(1) == score.group(1)
    labels = set(re.findall(r'<td><span class="label label-(\w+)"', at_risk))
    assert labels <= {"at_risk"}
    assert (world.id in at_risk) == (row.group(2) == "at_risk")
    # Search results carry the same label and score.
    assert f"label-{row.group(2)}" in found and f"</span> {score.group(1)}" in found
