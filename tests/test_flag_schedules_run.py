"""Scheduled flag changes are applied by the webhook worker's loop and by the Prefect flow."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.settings import Settings
from api.webhooks.worker import Worker
from tests.harness import auth
from tests.test_flags import HANG_GUARD, create_flag


@pytest.fixture
def admin(staff_admin: tuple[str, str]) -> str:
    return staff_admin[1]


def schedule_soon(client: httpx.Client, admin: str, key: str, rollout: int) -> datetime:
    at = datetime.now(UTC) + timedelta(seconds=1)
    made = client.post(f"/v1/admin/flags/{key}/schedules", headers=auth(admin),
                       json={"at": at.isoformat(), "patch": {"rollout_percentage": rollout}})  # fmt: skip
    assert made.status_code == 201, made.text
    return at


def rollout_of(client: httpx.Client, admin: str, key: str) -> int:
    return int(client.get(f"/v1/admin/flags/{key}", headers=auth(admin)).json()["rollout_percentage"])


async def test_the_worker_applies_a_change_once_it_is_due(
    client: httpx.Client, admin: str, settings: Settings
) -> None:
    key = create_flag(client, admin, rollout_percentage=0)["key"]
    schedule_soon(client, admin, key, 40)
    stop = asyncio.Event()
    async with Worker(settings) as worker:
        running = asyncio.create_task(worker.run(stop))
        try:
            deadline = time.monotonic() + HANG_GUARD + 30
            while await asyncio.to_thread(rollout_of, client, admin, key) != 40:
                assert time.monotonic() < deadline, "the worker never applied the due change"
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await running
    statuses = client.get(f"/v1/admin/flags/{key}/schedules", headers=auth(admin)).json()["items"]
    assert [s["status"] for s in statuses] == ["applied"]


def test_the_apply_flag_schedules_flow_applies_due_changes(
    client: httpx.Client, admin: str, prefect_harness: None, pipeline_env: dict[str, Path]
) -> None:
    from pipelines.flows import apply_flag_schedules

    key = create_flag(client, admin, rollout_percentage=0)["key"]
    at = schedule_soon(client, admin, key, 25)
    while datetime.now(UTC) <= at:
        time.sleep(0.1)
    assert apply_flag_schedules() >= 1
    assert rollout_of(client, admin, key) == 25
    statuses = client.get(f"/v1/admin/flags/{key}/schedules", headers=auth(admin)).json()["items"]
    assert [s["status"] for s in statuses] == ["applied"]  # applied once, and marked so
