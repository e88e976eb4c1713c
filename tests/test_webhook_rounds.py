"""A worker's round as the database sees it: every outcome of a claim recorded in one statement
(one transaction), a lease lost mid-request, and claims that leave a saturated endpoint out.

Real receivers on free ports, an in-process worker on the session's Postgres."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from api.db.engine import libpq_url
from api.settings import Settings
from api.webhooks.messages import NOTIFY_CHANNEL
from api.webhooks.sender import Job
from api.webhooks.worker import Worker, WorkerConfig
from tests.harness import OrgWorld, make_org
from tests.hooks import attempt_rows, create_endpoint, delivery_rows, publish
from tests.receivers import Arrival, Receiver, Reply, always


@pytest.fixture
def world(hooks_client: httpx.Client, engine: Engine) -> OrgWorld:
    return make_org(hooks_client, engine, roles=("owner", "admin"))


def endpoint_row(engine: Engine, endpoint_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM webhook_endpoints WHERE id = :i"), {"i": endpoint_id}).one()
    return dict(row._mapping)


async def test_a_round_of_mixed_outcomes_is_one_transaction(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver() as ok, Receiver(always(500)) as failing, Receiver(always(410)) as gone:
        endpoints = {
            name: create_endpoint(hooks_client, world, receiver.url)["id"]
            for name, receiver in (("ok", ok), ("failing", failing), ("gone", gone))
        }
        for i in range(2):
            publish(hooks_client, world, "member.added", {"i": i})
        # One claim takes all six (two messages to three endpoints), whatever other tests queue.
        async with Worker(hooks_settings, WorkerConfig(batch_size=512)) as worker:
            await worker.tick()
        assert (len(ok.arrivals), len(failing.arrivals), len(gone.arrivals)) == (2, 2, 2)
    # (The 410 also publishes webhook.endpoint_disabled to the other two: not part of this round.)
    deliveries = delivery_rows(engine, world.id, event_type="member.added")
    with engine.connect() as conn:
        transactions = conn.execute(
            text(
                "SELECT count(DISTINCT a.xmin::text), count(*) FROM webhook_attempts a"
                " JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.organization_id = :o"
            ),
            {"o": world.id},
        ).one()
    assert tuple(transactions) == (1, 6)
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        by_endpoint.setdefault(str(d["endpoint_id"]), []).append(d)
    for d in by_endpoint[endpoints["ok"]]:
        (attempt,) = attempt_rows(engine, d["id"])
        assert d["status"] == "succeeded" and d["attempts"] == 1 and d["next_attempt_at"] is None
        assert d["last_error"] is None and d["leased_by"] is None
        assert d["succeeded_at"] is not None and d["succeeded_at"] >= attempt["started_at"]
        assert d["last_attempt_at"] == attempt["started_at"] and attempt["status_code"] == 200
    for d in by_endpoint[endpoints["failing"]]:
        (attempt,) = attempt_rows(engine, d["id"])
        assert d["status"] == "failed" and d["next_attempt_at"] is not None and d["succeeded_at"] is None
        assert d["last_error"] == "HTTP 500" and d["last_status_code"] == 500 and d["leased_by"] is None
    for d in by_endpoint[endpoints["gone"]]:
        assert d["status"] == "failed" and d["next_attempt_at"] is None
    failing_starts = [
        attempt_rows(engine, d["id"])[0]["started_at"] for d in by_endpoint[endpoints["failing"]]
    ]
    assert endpoint_row(engine, endpoints["failing"])["failing_since"] == min(failing_starts)
    assert endpoint_row(engine, endpoints["ok"])["failing_since"] is None
    assert endpoint_row(engine, endpoints["gone"])["enabled"] is False


async def test_an_answer_after_the_lease_moved_on_is_an_attempt_not_a_state(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    """While the request is in flight the lease passes to another worker (as after an expiry and a
    reap): the answer is recorded as an attempt, and the other worker's hold is left alone."""

    def steal(arrival: Arrival, n: int) -> Reply:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE webhook_deliveries SET leased_by = 'another-worker' "
                    "WHERE organization_id = :o AND status = 'delivering'"
                ),
                {"o": world.id},
            )
        return Reply(200)

    with Receiver(steal) as receiver:
        create_endpoint(hooks_client, world, receiver.url)
        publish(hooks_client, world, "member.added", {})
        async with Worker(hooks_settings) as worker:
            await worker.tick()
        assert len(receiver.arrivals) == 1
    (delivery,) = delivery_rows(engine, world.id, event_type="member.added")
    assert delivery["status"] == "delivering" and delivery["leased_by"] == "another-worker"
    assert delivery["attempts"] == 0
    (attempt,) = attempt_rows(engine, delivery["id"])
    assert attempt["status_code"] == 200 and attempt["attempt_number"] == 1


async def test_a_saturated_backlog_is_not_read_past_again_until_something_is_published(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    """A claim that leaves out a saturated endpoint reads past its whole backlog; one that found
    nothing stands (here for the whole, long poll interval), but a publish is claimed at once.
    Other tests publish too (one channel, one queue for the database): each of their notifications
    may rightly cause one more such claim, so they are counted and allowed for."""
    notified: list[object] = []

    async def listen(ready: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(
            libpq_url(hooks_settings.database_url or ""), autocommit=True
        ) as conn:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            ready.set()
            async for note in conn.notifies():
                notified.append(note)

    with Receiver(always(200, delay=0.1)) as slow, Receiver() as fast:
        create_endpoint(hooks_client, world, slow.url, event_types=["bulk.*"])
        create_endpoint(hooks_client, world, fast.url, event_types=["urgent.*"])
        # More than a claim's scan window (4 x the batch) stays due ahead of the urgent message.
        for i in range(80):
            publish(hooks_client, world, "bulk.export", {"i": i})
        config = WorkerConfig(concurrency=16, batch_size=8, per_endpoint=2, poll_interval=30)
        async with Worker(hooks_settings, config) as worker:
            claim = worker.queue.claim
            leaving_out: list[int] = []

            async def counted(
                limit: int, saturated: list[uuid.UUID] | None = None, held: dict[uuid.UUID, int] | None = None
            ) -> list[Job]:
                jobs = await claim(limit, saturated, held)
                if saturated:
                    leaving_out.append(len(jobs))
                return jobs

            worker.queue.claim = counted  # type: ignore[method-assign]
            ready = asyncio.Event()
            listener = asyncio.create_task(listen(ready))
            await ready.wait()
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            for _ in range(200):
                if len(slow.arrivals) >= 12:  # six rounds of the endpoint freeing a slot
                    break
                await asyncio.sleep(0.05)
            before_publish, others, slow_then = list(leaving_out), len(notified), len(slow.arrivals)
            publish(hooks_client, world, "urgent.alert", {"i": 0})
            for _ in range(200):
                if fast.arrivals:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await running
            listener.cancel()
    # The rest of the backlog would be left to other tests' workers (one queue): park it.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL"
                " WHERE organization_id = :o AND status IN ('pending', 'failed')"
            ),
            {"o": world.id},
        )
    assert len(slow.arrivals) >= 12
    # A look past the backlog that found nothing is taken again only after a publish (or after a
    # look that found something: other tests' deliveries that fell due, or were released by their
    # stopped workers, without a notification); not once per freed slot (six or more by now).
    assert 0 in before_publish
    repeated = sum(a == b == 0 for a, b in itertools.pairwise(before_publish))
    assert repeated <= others
    assert len(fast.arrivals) == 1
    # Claimed on its notification, not once the backlog ahead of it was nearly gone (~50 more).
    ahead = sum(a.at < fast.arrivals[0].at for a in slow.arrivals)
    assert ahead <= slow_then + 8
