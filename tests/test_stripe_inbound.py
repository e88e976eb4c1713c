"""Inbound Stripe webhooks, signed the way Stripe signs them (the SDK's own signer)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import Engine, text

from api.webhooks import dispatch
from api.webhooks.models import InboundEvent
from tests.conftest import STRIPE_SECRET
from tests.harness import audit_rows, auth

OBJECTS = json.loads((Path(__file__).parent / "data" / "stripe_objects.json").read_text())


def stripe_event(event_type: str = "customer.subscription.updated", **fields: Any) -> dict[str, Any]:
    """An event shaped like Stripe's, around Stripe's own example subscription or invoice."""
    obj = OBJECTS["invoice" if event_type.startswith("invoice.") else "subscription"]
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "api_version": "2024-06-20",
        "created": int(time.time()), "data": {"object": obj, "previous_attributes": {}}, "livemode": False,
        "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "type": event_type, **fields,
    }  # fmt: skip


def send(
    client: httpx.Client,
    event: dict[str, Any] | bytes,
    *,
    secret: str = STRIPE_SECRET,
    timestamp: int | None = None,
    tamper: bool = False,
    signature: str | None = None,
) -> httpx.Response:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    try:
        header = signature or stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret, timestamp
        )
    except UnicodeDecodeError:  # the SDK signs text; Stripe's v1 is an HMAC over the bytes
        t = timestamp or int(time.time())
        mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        header = f"t={t},v1={mac}"
    if tamper:
        body = body.replace(b'"livemode": false', b'"livemode": true')
    headers = {"content-type": "application/json"}
    if header:
        headers["Stripe-Signature"] = header
    return client.post("/v1/webhooks/stripe", content=body, headers=headers)


def stored(engine: Engine, external_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM inbound_events WHERE external_id = :e"), {"e": external_id})
        return [dict(r._mapping) for r in rows]


def rejections(engine: Engine, since_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM inbound_webhook_requests WHERE outcome = 'rejected' AND id > :i ORDER BY id"),
            {"i": since_id},
        )
        return [dict(r._mapping) for r in rows]


def watermark() -> str:
    from api.db.base import new_id

    return str(new_id())


@pytest.fixture
def handlers() -> Iterator[dict[str, dispatch.Handler]]:
    saved = dict(dispatch.HANDLERS)
    yield dispatch.HANDLERS
    dispatch.HANDLERS.clear()
    dispatch.HANDLERS.update(saved)


def test_a_signed_event_is_stored_once_and_replays_are_counted(
    client: httpx.Client, engine: Engine, staff_support: tuple[str, str]
) -> None:
    event = stripe_event()
    first = send(client, event)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False and first.json()["status"] == "ignored"
    replay = send(client, event)  # Stripe retries with a fresh signature and timestamp
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert replay.json()["id"] == first.json()["id"]
    (row,) = stored(engine, event["id"])
    assert row["duplicates"] == 1 and row["attempts"] == 1 and row["status"] == "ignored"
    assert row["event_type"] == "customer.subscription.updated" and row["payload"] == event
    assert int(row["event_created_at"].timestamp()) == event["created"]
    listed = client.get(
        "/v1/admin/inbound-events",
        params={"event_type": "customer.subscription.*"},
        headers=auth(staff_support[1]),
    ).json()["items"]
    assert event["id"] in {e["external_id"] for e in listed}
    detail = client.get(f"/v1/admin/inbound-events/{row['id']}", headers=auth(staff_support[1])).json()
    assert detail["payload"]["data"]["object"]["id"] == OBJECTS["subscription"]["id"]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"tamper": True}, "No signatures found matching"),
        ({"timestamp": int(time.time()) - 301}, "tolerance"),
        ({"secret": "whsec_someone_else"}, "No signatures found matching"),
        ({"signature": "t=abc,v1=zzz"}, "Unable to extract"),
        ({"signature": f"t={int(time.time())}"}, "No signatures found with expected scheme"),
    ],
)
def test_bad_signatures_are_400_recorded_and_not_processed(
    client: httpx.Client, engine: Engine, change: dict[str, Any], detail: str
) -> None:
    mark = watermark()
    event = stripe_event()
    response = send(client, event, **change)
    assert response.status_code == 400 and response.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert detail in response.json()["detail"]
    assert stored(engine, event["id"]) == []
    (rejected,) = rejections(engine, mark)
    assert detail in rejected["error"] and rejected["body_bytes"] > 0 and rejected["inbound_event_id"] is None


@pytest.mark.parametrize("ahead", [305, 86_400, 10**9])
def test_a_timestamp_too_far_in_the_future_is_400_and_recorded(
    client: httpx.Client, engine: Engine, ahead: int
) -> None:
    mark = watermark()
    event = stripe_event()
    response = send(client, event, timestamp=int(time.time()) + ahead)
    assert response.status_code == 400 and "in the future" in response.json()["detail"], response.text
    assert stored(engine, event["id"]) == []
    (rejected,) = rejections(engine, mark)
    assert "tolerance" in rejected["error"] and rejected["inbound_event_id"] is None


def test_a_timestamp_slightly_ahead_is_within_tolerance(client: httpx.Client, engine: Engine) -> None:
    event = stripe_event()
    response = send(client, event, timestamp=int(time.time()) + 200)  # a receiver's clock behind
    assert response.status_code == 200, response.text
    assert len(stored(engine, event["id"])) == 1


@pytest.mark.parametrize(
    ("value", "detail"),
    [("NaN", "NaN is not a JSON number"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
     ("1e400", "1e400 is out of range"), ("-1e400", "out of range")],
)  # fmt: skip
def test_signed_bodies_with_numbers_json_cannot_hold_are_400_and_recorded(
    client: httpx.Client, engine: Engine, value: str, detail: str
) -> None:
    mark = watermark()
    event = stripe_event()
    body = json.dumps({**event, "data": {"object": {"amount": "AMOUNT"}}}).replace('"AMOUNT"', value)
    response = send(client, body.encode())
    assert response.status_code == 400 and response.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert detail in response.json()["detail"], response.text
    assert stored(engine, event["id"]) == []
    (rejected,) = rejections(engine, mark)
    assert detail in rejected["error"] and rejected["body_bytes"] == len(body)


def test_an_oversized_body_is_413_and_recorded(client: httpx.Client, engine: Engine) -> None:
    mark = watermark()
    event = stripe_event(padding="x" * 600_000)
    response = send(client, event)
    assert response.status_code == 413, response.text
    (rejected,) = rejections(engine, mark)
    assert "limit" in rejected["error"] and rejected["inbound_event_id"] is None


def test_missing_signature_and_non_events(
    client: httpx.Client, engine: Engine, staff_admin: tuple[str, str]
) -> None:
    mark = watermark()
    unsigned = client.post("/v1/webhooks/stripe", json=stripe_event())
    assert unsigned.status_code == 400 and "No Stripe-Signature" in unsigned.json()["detail"]
    for body in (b"[1, 2]", b'{"object": "event"}', b"\xff\xfe not json"):
        response = send(client, body)
        assert response.status_code == 400, response.text
        assert "Stripe event" in response.json()["detail"]
    assert len(rejections(engine, mark)) == 4
    listed = client.get(
        "/v1/admin/inbound-requests", params={"outcome": "rejected"}, headers=auth(staff_admin[1])
    ).json()["items"]
    assert len(listed) >= 4 and all(r["outcome"] == "rejected" for r in listed)


def test_handlers_process_failures_are_recorded_and_reprocessable(
    client: httpx.Client,
    engine: Engine,
    handlers: dict[str, dispatch.Handler],
    staff_support: tuple[str, str],
) -> None:
    seen: list[str] = []
    broken = True

    async def on_invoice(session: Any, event: InboundEvent) -> None:
        await session.execute(text("SELECT 1"))
        if broken:
            raise RuntimeError("mirror unavailable")
        seen.append(event.external_id)

    handlers["invoice.*"] = on_invoice
    event = stripe_event("invoice.paid")
    response = send(client, event)
    assert response.status_code == 200 and response.json()["status"] == "failed"
    (row,) = stored(engine, event["id"])
    assert row["last_error"] == "RuntimeError: mirror unavailable" and row["attempts"] == 1
    broken = False
    again = client.post(f"/v1/admin/inbound-events/{row['id']}/reprocess", headers=auth(staff_support[1]))
    assert (
        again.status_code == 200 and again.json()["status"] == "processed" and again.json()["attempts"] == 2
    )
    assert seen == [event["id"]]
    (entry,) = audit_rows(engine, action="inbound_event.reprocessed", resource_id=str(row["id"]))
    assert entry["actor_type"] == "staff" and entry["metadata"]["after"]["status"] == "processed"
    # Other types still have no handler: recorded and ignored.
    assert send(client, stripe_event("customer.created")).json()["status"] == "ignored"


def test_handler_lookup_prefers_the_exact_type() -> None:
    async def exact(session: Any, event: InboundEvent) -> None: ...
    async def prefix(session: Any, event: InboundEvent) -> None: ...
    async def deeper(session: Any, event: InboundEvent) -> None: ...

    table = {
        "invoice.paid": exact,
        "invoice.*": prefix,
        "customer.subscription.*": deeper,
        "customer.*": prefix,
    }
    saved = dict(dispatch.HANDLERS)
    dispatch.HANDLERS.clear()
    dispatch.HANDLERS.update(table)
    try:
        assert dispatch.handler_for("invoice.paid") is exact
        assert dispatch.handler_for("invoice.finalized") is prefix
        assert dispatch.handler_for("customer.subscription.deleted") is deeper
        assert dispatch.handler_for("charge.succeeded") is None
    finally:
        dispatch.HANDLERS.clear()
        dispatch.HANDLERS.update(saved)


def test_staff_only_and_support_may_reprocess(
    client: httpx.Client, org: Any, staff_support: tuple[str, str]
) -> None:
    assert client.get("/v1/admin/inbound-events", headers=org.headers("owner")).status_code == 403
    ghost = uuid.uuid4()
    assert (
        client.post(f"/v1/admin/inbound-events/{ghost}/reprocess", headers=org.headers("owner")).status_code
        == 403
    )
    assert (
        client.post(f"/v1/admin/inbound-events/{ghost}/reprocess", headers=auth(staff_support[1])).status_code
        == 404
    )


def test_an_unconfigured_secret_refuses_everything() -> None:
    from api.errors import ServiceUnavailable
    from api.webhooks import inbound

    body = json.dumps(stripe_event()).encode()
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), STRIPE_SECRET)
    with pytest.raises(ServiceUnavailable, match="KEEL_STRIPE_WEBHOOK_SECRET"):
        inbound.verify(body, header, None)
    assert inbound.verify(body, header, STRIPE_SECRET)["type"] == "customer.subscription.updated"
