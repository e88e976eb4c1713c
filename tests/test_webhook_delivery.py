"""Delivery, as a customer's receiver sees it: real HTTP to local receivers, an in-process worker
on the session's Postgres, signatures checked with the `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import itertools
import json
import socketserver
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import Engine, text
from standardwebhooks.webhooks import Webhook

from api.settings import Settings
from api.webhooks.worker import Worker, WorkerConfig
from tests.harness import OrgWorld, audit_rows, auth, free_port, make_org
from tests.hooks import attempt_rows, create_endpoint, deliver, delivery_rows, publish
from tests.receivers import Receiver, Reply, always, script


@pytest.fixture
def world(hooks_client: httpx.Client, engine: Engine) -> OrgWorld:
    return make_org(hooks_client, engine, roles=("owner", "admin", "member"))


async def test_a_delivery_is_signed_as_standard_webhooks_says(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver() as receiver:
        endpoint = create_endpoint(hooks_client, world, receiver.url, event_types=["invoice.*"])
        message = publish(hooks_client, world, "invoice.paid", {"invoice": "in_1", "amount": 4200})
        assert message["deliveries"] == 1 and message["duplicate"] is False
        await deliver(hooks_settings, world.id)
        (arrival,) = receiver.arrivals
    payload = Webhook(endpoint["secret"]).verify(arrival.body, arrival.headers)
    assert payload["type"] == "invoice.paid" and payload["data"] == {"invoice": "in_1", "amount": 4200}
    assert arrival.headers["webhook-id"] == f"msg_{message['id'].replace('-', '')}"
    assert arrival.headers["content-type"] == "application/json"
    with pytest.raises(Exception, match="signature"):
        Webhook(endpoint["secret"]).verify(arrival.body + b" ", arrival.headers)
    (delivery,) = delivery_rows(engine, world.id)
    assert (
        delivery["status"] == "succeeded"
        and delivery["attempts"] == 1
        and delivery["next_attempt_at"] is None
    )
    (attempt,) = attempt_rows(engine, delivery["id"])
    assert attempt["status_code"] == 200 and attempt["response_body"] == "ok" and attempt["duration_ms"] >= 0
    assert attempt["response_headers"]["content-type"] == "text/plain"


async def test_the_body_is_the_standard_webhooks_envelope_as_stored(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    """The claim builds the body in SQL: ``type`` as json.dumps writes it, ``timestamp`` as
    Python's isoformat writes the message's creation in UTC (no fraction when it has none), and
    ``data`` the stored payload's text, byte for byte."""
    payload = {"text": 'é✓ "quoted" \\ tab\t', "nested": {"list": [1, 2.5, None, True]}, "n": 10**20}
    instants = [
        datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, 59, 999999, tzinfo=timezone(timedelta(hours=-7))),
    ]
    with Receiver() as receiver:
        create_endpoint(hooks_client, world, receiver.url, event_types=["report.*"])
        messages = [publish(hooks_client, world, f"report.v{i}_x-y", payload) for i in range(len(instants))]
        with engine.begin() as conn:
            for message, at in zip(messages, instants, strict=True):
                conn.execute(
                    text("UPDATE webhook_messages SET created_at = :at WHERE id = :i"),
                    {"at": at, "i": message["id"]},
                )
        with engine.connect() as conn:
            stored = dict(
                conn.execute(
                    text("SELECT id::text, payload::text FROM webhook_messages WHERE organization_id = :o"),
                    {"o": world.id},
                ).all()
            )
        await deliver(hooks_settings, world.id)
        arrivals = {a.headers["webhook-id"]: a.body for a in receiver.arrivals}
    assert len(arrivals) == len(messages)
    for message, at in zip(messages, instants, strict=True):
        expected = b'{"type":%s,"timestamp":"%s","data":%s}' % (
            json.dumps(message["event_type"]).encode(),
            at.astimezone(UTC).isoformat().encode(),
            stored[message["id"]].encode(),
        )
        assert arrivals[f"msg_{message['id'].replace('-', '')}"] == expected
        assert json.loads(expected)["data"] == payload


async def test_rotation_signs_with_both_secrets_for_a_day(
    hooks_client: httpx.Client, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver() as receiver:
        endpoint = create_endpoint(hooks_client, world, receiver.url)
        base = f"/v1/orgs/{world.id}/webhook-endpoints/{endpoint['id']}"
        rotated = hooks_client.post(f"{base}/rotate-secret", headers=world.headers("admin")).json()
        assert rotated["previous_secret"] == endpoint["secret"] and rotated["secret"] != endpoint["secret"]
        expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
        assert hooks_client.get(f"{base}/secret", headers=world.headers("owner")).json() == rotated
        publish(hooks_client, world, "member.added", {"n": 1})
        await deliver(hooks_settings, world.id)
        (arrival,) = receiver.arrivals
    assert len(arrival.headers["webhook-signature"].split(" ")) == 2
    # A receiver still holding the old secret verifies, and so does one with the new secret.
    for secret in (endpoint["secret"], rotated["secret"]):
        assert Webhook(secret).verify(arrival.body, arrival.headers)["data"] == {"n": 1}


async def test_fails_twice_then_succeeds_on_the_schedule(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    schedule = hooks_settings.webhook_retry_schedule  # (0, 1, 2) seconds
    with Receiver(script(Reply(500, b"boom"), Reply(502), Reply(200))) as receiver:
        create_endpoint(hooks_client, world, receiver.url)
        publish(hooks_client, world, "member.added", {"user": "u1"})
        await deliver(hooks_settings, world.id)
        arrivals = receiver.arrivals
    assert len(arrivals) == 3
    assert len({a.headers["webhook-id"] for a in arrivals}) == 1  # the same message each time
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(arrivals)]
    for gap, scheduled in zip(gaps, schedule[1:], strict=True):
        assert scheduled * 0.9 <= gap <= scheduled * 1.1 + 1.5, gaps  # ±10% jitter, bounded slack
    (delivery,) = delivery_rows(engine, world.id)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3
    attempts = attempt_rows(engine, delivery["id"])
    assert [a["attempt_number"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 502, 200]
    assert attempts[0]["response_body"] == "boom"


async def test_always_failing_ends_exhausted_and_keeps_4kb_of_each_answer(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver(always(500, body=b"x" * 10_000)) as receiver:
        create_endpoint(hooks_client, world, receiver.url)
        publish(hooks_client, world, "member.added", {})
        await deliver(hooks_settings, world.id)
        assert len(receiver.arrivals) == len(hooks_settings.webhook_retry_schedule)
    (delivery,) = delivery_rows(engine, world.id)
    assert delivery["status"] == "exhausted" and delivery["next_attempt_at"] is None
    assert delivery["last_status_code"] == 500 and delivery["last_error"] == "HTTP 500"
    attempts = attempt_rows(engine, delivery["id"])
    assert len(attempts) == 3 and all(len(a["response_body"]) == 4096 for a in attempts)


async def test_retry_after_is_honoured_on_429(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver(script(Reply(429, headers={"Retry-After": "3"}), Reply(200))) as receiver:
        create_endpoint(hooks_client, world, receiver.url)
        publish(hooks_client, world, "member.added", {})
        await deliver(hooks_settings, world.id)
        first, second = receiver.arrivals
    assert second.at - first.at >= 3  # the schedule alone would have waited 1 s
    (delivery,) = delivery_rows(engine, world.id)
    assert delivery["status"] == "succeeded"


async def test_410_disables_the_endpoint_and_tells_the_others(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver(always(410)) as gone, Receiver() as other:
        doomed = create_endpoint(hooks_client, world, gone.url, event_types=["member.*"])
        watcher = create_endpoint(hooks_client, world, other.url, event_types=["webhook.*"])
        publish(hooks_client, world, "member.added", {})
        publish(hooks_client, world, "member.removed", {})
        await deliver(hooks_settings, world.id)
        assert len(gone.arrivals) == 2  # both were in flight together; neither is retried
        (notice,) = other.arrivals
    body = Webhook(watcher["secret"]).verify(notice.body, notice.headers)
    assert body["type"] == "webhook.endpoint_disabled" and body["data"]["endpoint_id"] == doomed["id"]
    assert "410" in body["data"]["reason"]
    state = hooks_client.get(
        f"/v1/orgs/{world.id}/webhook-endpoints/{doomed['id']}", headers=world.headers("owner")
    ).json()
    assert state["enabled"] is False and "410" in state["disabled_reason"]
    (entry,) = audit_rows(engine, organization_id=world.id, action="webhook_endpoint.disabled")
    assert entry["actor_type"] == "system" and entry["resource_id"] == doomed["id"]
    doomed_rows = delivery_rows(engine, world.id, endpoint_id=doomed["id"])
    assert {d["status"] for d in doomed_rows} == {"failed"} and all(
        d["next_attempt_at"] is None for d in doomed_rows
    )
    # Disabled: new messages are not fanned out to it.
    assert publish(hooks_client, world, "member.added", {"again": True})["deliveries"] == 0


async def test_five_days_of_failure_disables(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver(always(500)) as receiver:
        endpoint = create_endpoint(hooks_client, world, receiver.url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute' WHERE id = :i"
                ),
                {"i": endpoint["id"]},
            )
        publish(hooks_client, world, "member.added", {})
        await deliver(hooks_settings, world.id)
        assert len(receiver.arrivals) == 1  # disabled after its first failure: the rest are parked
    state = hooks_client.get(
        f"/v1/orgs/{world.id}/webhook-endpoints/{endpoint['id']}", headers=world.headers("owner")
    ).json()
    assert state["enabled"] is False and "5 days" in state["disabled_reason"]


async def test_a_success_ends_a_run_of_failures(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver(script(Reply(500), Reply(200))) as receiver:
        endpoint = create_endpoint(hooks_client, world, receiver.url)
        publish(hooks_client, world, "member.added", {})
        async with Worker(hooks_settings) as worker:
            await worker.tick()
            with engine.connect() as conn:
                since = conn.execute(
                    text("SELECT failing_since FROM webhook_endpoints WHERE id = :i"), {"i": endpoint["id"]}
                ).scalar()
            assert since is not None
            await worker.run_until_idle(organization_id=uuid.UUID(world.id))
        assert len(receiver.arrivals) == 2
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT failing_since FROM webhook_endpoints WHERE id = :i"), {"i": endpoint["id"]}
            ).scalar()
            is None
        )


async def test_errors_are_classified(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"

    class PlainText(socketserver.BaseRequestHandler):
        def handle(self) -> None:  # answers a TLS hello in plain HTTP
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    plain = socketserver.ThreadingTCPServer(("127.0.0.1", 0), PlainText)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    with Receiver(always(200, delay=3)) as slow:
        refused = create_endpoint(hooks_client, world, closed)
        timed_out = create_endpoint(hooks_client, world, slow.url)
        unknown = create_endpoint(hooks_client, world, "http://no-such-host.invalid/hook")
        tls = create_endpoint(hooks_client, world, f"https://127.0.0.1:{plain.server_address[1]}/hook")
        publish(hooks_client, world, "member.added", {})
        async with Worker(hooks_settings, WorkerConfig(request_timeout=1, lease_seconds=5)) as worker:
            await worker.tick()
    plain.shutdown()
    plain.server_close()
    classes = {}
    for endpoint in (refused, timed_out, unknown, tls):
        (delivery,) = delivery_rows(engine, world.id, endpoint_id=endpoint["id"])
        (attempt,) = attempt_rows(engine, delivery["id"])
        assert attempt["status_code"] is None and delivery["status"] == "failed"
        classes[endpoint["id"]] = attempt["error_class"]
    assert classes == {
        refused["id"]: "refused",
        timed_out["id"]: "timeout",
        unknown["id"]: "dns",
        tls["id"]: "tls",
    }


async def test_private_targets_are_refused_at_send_time(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    """An endpoint stored while private targets were allowed (or a name that later resolves inward)
    is refused by a worker that does not allow them: the resolved address is checked at connect."""
    with Receiver() as receiver:
        create_endpoint(hooks_client, world, receiver.url.replace("127.0.0.1", "localhost"))
        publish(hooks_client, world, "member.added", {})
        strict = hooks_settings.with_(webhook_allow_private_targets=False)
        async with Worker(strict) as worker:
            await worker.tick()
        assert receiver.arrivals == []
    (delivery,) = delivery_rows(engine, world.id)
    (attempt,) = attempt_rows(engine, delivery["id"])
    assert attempt["error_class"] == "ssrf_blocked" and "127.0.0.1" in attempt["error_detail"]


async def test_recover_and_retry_send_failed_deliveries_again(
    hooks_client: httpx.Client,
    engine: Engine,
    world: OrgWorld,
    hooks_settings: Settings,
    staff_support: tuple[str, str],
) -> None:
    healthy = False
    with Receiver(lambda arrival, n: Reply(200 if healthy else 500)) as receiver:
        endpoint = create_endpoint(hooks_client, world, receiver.url)
        started = datetime.now(UTC) - timedelta(seconds=1)
        for i in range(3):
            publish(hooks_client, world, "member.added", {"i": i})
        await deliver(hooks_settings, world.id)
        assert {d["status"] for d in delivery_rows(engine, world.id)} == {"exhausted"}
        healthy = True
        base = f"/v1/orgs/{world.id}/webhook-endpoints/{endpoint['id']}"
        one = delivery_rows(engine, world.id)[0]["id"]
        retried = hooks_client.post(
            f"/v1/admin/webhook-deliveries/{one}/retry", headers=auth(staff_support[1])
        )
        assert retried.status_code == 200 and retried.json()["status"] == "pending"
        await deliver(hooks_settings, world.id)
        recovered = hooks_client.post(
            f"{base}/recover", params={"since": started.isoformat()}, headers=world.headers("owner")
        )
        assert recovered.json() == {"requeued": 2}
        await deliver(hooks_settings, world.id)
    assert {d["status"] for d in delivery_rows(engine, world.id)} == {"succeeded"}
    stats = hooks_client.get(f"{base}/stats", headers=world.headers("owner")).json()
    assert stats["attempts"] == 12 and stats["succeeded"] == 3 and stats["success_rate"] == 0.25
    assert stats["p95_latency_ms"] is not None and stats["deliveries"]["succeeded"] == 3
    (entry,) = audit_rows(engine, organization_id=world.id, action="webhook_delivery.retried")
    assert entry["actor_type"] == "staff"


async def test_concurrent_workers_deliver_each_message_once(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver() as receiver:
        create_endpoint(hooks_client, world, receiver.url)
        for i in range(120):
            publish(hooks_client, world, "member.added", {"i": i}, message_id=f"m-{i}")
        config = WorkerConfig(batch_size=16, concurrency=32)
        async with Worker(hooks_settings, config) as one, Worker(hooks_settings, config) as two:
            stop = asyncio.Event()
            runs = [asyncio.create_task(w.run(stop)) for w in (one, two)]
            for _ in range(300):
                if len(receiver.arrivals) >= 120 and not delivery_rows(engine, world.id, status="delivering"):
                    break
                await asyncio.sleep(0.05)
            stop.set()
            stats = await asyncio.gather(*runs)
        ids = [a.headers["webhook-id"] for a in receiver.arrivals]
    assert len(ids) == 120 and len(set(ids)) == 120
    assert stats[0].succeeded > 0 and stats[1].succeeded > 0
    rows = delivery_rows(engine, world.id)
    assert {d["status"] for d in rows} == {"succeeded"}, [
        (d["status"], d["attempts"], d["leased_by"], d["last_attempt_at"])
        for d in rows
        if d["status"] != "succeeded"
    ]


async def test_shutdown_releases_what_it_holds(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver():
        create_endpoint(hooks_client, world, "http://127.0.0.1:9/never")
        publish(hooks_client, world, "member.added", {})
        async with Worker(hooks_settings) as worker:
            (_job,) = [j for j in await worker.claim(100) if str(j.organization_id) == world.id]
            assert delivery_rows(engine, world.id)[0]["status"] == "delivering"
        # Leaving the worker released the lease it never used.
    (delivery,) = delivery_rows(engine, world.id)
    assert delivery["status"] == "pending" and delivery["leased_by"] is None and delivery["attempts"] == 0


def test_payload_shape_matches_what_was_published(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld
) -> None:
    body = {"nested": {"list": [1, 2.5, None, True], "text": "é✓"}}
    message = publish(hooks_client, world, "report.ready", body)
    response = hooks_client.get(f"/v1/orgs/{world.id}/webhook-deliveries", headers=world.headers("owner"))
    assert response.json()["items"] == [] and message["deliveries"] == 0
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT payload FROM webhook_messages WHERE id = :i"), {"i": message["id"]}
        ).scalar()
    assert stored == body and json.dumps(stored)


async def test_a_slow_backlog_does_not_hold_up_other_endpoints(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, hooks_settings: Settings
) -> None:
    with Receiver(always(200, delay=0.5)) as slow, Receiver() as fast:
        create_endpoint(hooks_client, world, slow.url, event_types=["bulk.*"])
        create_endpoint(hooks_client, world, fast.url, event_types=["urgent.*"])
        for i in range(60):
            publish(hooks_client, world, "bulk.export", {"i": i})
        for i in range(3):  # due after the whole backlog
            publish(hooks_client, world, "urgent.alert", {"i": i})
        config = WorkerConfig(concurrency=16, batch_size=8, per_endpoint=4)
        async with Worker(hooks_settings, config) as worker:
            stop = asyncio.Event()
            running = asyncio.create_task(worker.run(stop))
            for _ in range(200):
                if len(fast.arrivals) == 3:
                    break
                await asyncio.sleep(0.05)
            slow_done_then = len(slow.arrivals)
            stop.set()
            await running
    assert len(fast.arrivals) == 3
    # The urgent ones were claimed once the backlog held its share (2 x 4, give or take a claim of
    # 8), not after the backlog: without the share they wait for ~50 of the 60.
    assert slow_done_then <= 16
    assert slow.max_in_progress == 4  # the per-endpoint cap, reached and never passed
