"""Helpers for webhook tests: endpoints and messages through the API, a worker run in-process."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import Engine, text

from api.settings import Settings
from api.webhooks.queue import WorkerStats
from api.webhooks.worker import Worker, WorkerConfig
from tests.harness import OrgWorld


def create_endpoint(client: httpx.Client, world: OrgWorld, url: str, **fields: Any) -> dict[str, Any]:
    response = client.post(
        f"/v1/orgs/{world.id}/webhook-endpoints", json={"url": url, **fields}, headers=world.headers("owner")
    )
    assert response.status_code == 201, response.text
    return response.json()


def publish(
    client: httpx.Client, world: OrgWorld, event_type: str, payload: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    response = client.post(
        f"/v1/orgs/{world.id}/webhook-messages",
        json={"event_type": event_type, "payload": payload, **fields},
        headers=world.headers("owner"),
    )
    assert response.status_code == 202, response.text
    return response.json()


def delivery_rows(engine: Engine, org_id: str, **where: Any) -> list[dict[str, Any]]:
    clauses = "".join(f" AND {k} = :{k}" for k in where)
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT * FROM webhook_deliveries WHERE organization_id = :org{clauses} ORDER BY id"),
            {"org": org_id, **where},
        )
        return [dict(r._mapping) for r in rows]


def attempt_rows(engine: Engine, delivery_id: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM webhook_attempts WHERE delivery_id = :d ORDER BY attempt_number, started_at"),
            {"d": delivery_id},
        )
        return [dict(r._mapping) for r in rows]


async def deliver(
    settings: Settings, org_id: str, *, max_seconds: float = 30, horizon: float = 10, **config: Any
) -> WorkerStats:
    """Run a worker in this process until the organization has nothing due within ``horizon`` s."""
    async with Worker(settings, WorkerConfig(**config)) as worker:
        return await worker.run_until_idle(
            max_seconds=max_seconds, horizon=horizon, organization_id=uuid.UUID(org_id)
        )
