"""Inbound Stripe webhooks: verify the signature with the ``stripe`` SDK, store each event once by
its Stripe id, process it through :mod:`api.webhooks.dispatch`; every request leaves a row in
``inbound_webhook_requests`` (accepted, duplicate or rejected)."""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.audit import services as audit
from api.auth.context import Actor, RequestContext
from api.bodies import check_json
from api.db.base import new_id, utcnow
from api.errors import BadRequest, NotFound, ServiceUnavailable, ValidationFailed
from api.pagination import decode_cursor
from api.webhooks import dispatch
from api.webhooks.messages import check_payload
from api.webhooks.models import InboundEvent, InboundOutcome, InboundRequest, InboundStatus

SOURCE = "stripe"
TOLERANCE = 300
MAX_BODY = 512 * 1024


@dataclass(frozen=True, slots=True)
class Received:
    event: InboundEvent
    duplicate: bool


async def _record_request(
    session: AsyncSession,
    *,
    body: bytes,
    outcome: InboundOutcome,
    ctx: RequestContext,
    event_id: uuid.UUID | None = None,
    external_id: str | None = None,
    error: str | None = None,
) -> None:
    await session.execute(
        insert(InboundRequest).values(
            id=new_id(), source=SOURCE, received_at=utcnow(), outcome=outcome, inbound_event_id=event_id,
            external_id=external_id, error=error[:500] if error else None,
            body_sha256=hashlib.sha256(body).hexdigest(), body_bytes=len(body), ip=ctx.ip,
            request_id=ctx.request_id,
        )
    )  # fmt: skip


async def reject(
    sessions: async_sessionmaker[AsyncSession], *, body: bytes, ctx: RequestContext, error: str
) -> None:
    """Record a rejected request in its own transaction: the request's own one is rolled back."""
    async with sessions() as session, session.begin():
        await _record_request(session, body=body, outcome=InboundOutcome.rejected, ctx=ctx, error=error)


def signed_at(signature: str) -> int:
    """The ``t=`` of a ``Stripe-Signature`` header (the first, as the SDK reads it)."""
    for item in signature.split(","):
        key, _, value = item.partition("=")
        if key == "t":
            return int(value)
    raise ValueError("no timestamp")


def _not_a_number(name: str) -> float:
    # json accepts NaN, Infinity and -Infinity; JSON does not, and neither does JSONB.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def verify(body: bytes, signature: str | None, secret: str | None) -> dict[str, Any]:
    """The verified event as a dict; :class:`BadRequest` (or 503 when unconfigured) otherwise."""
    if not secret:
        raise ServiceUnavailable(
            "Stripe webhooks are not configured here (KEEL_STRIPE_WEBHOOK_SECRET)", retry_after=None
        )
    # Before the SDK parses it: it would fail on these too, but with less to say.
    check_json(body, subject="the Stripe event")
    import stripe  # loaded on first use: ~30 MB no API process needs until Stripe calls

    try:
        stripe.Webhook.construct_event(body, signature, secret, tolerance=TOLERANCE)
    except stripe.SignatureVerificationError as exc:
        raise BadRequest(f"Stripe-Signature: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # the signature is good, the body is not a Stripe event
        raise BadRequest(f"the body is not a Stripe event ({type(exc).__name__})") from None
    # The SDK refuses only timestamps too far in the past; one from the future is as suspect.
    ahead = signed_at(signature or "") - time.time()
    if ahead > TOLERANCE:
        raise BadRequest(
            f"Stripe-Signature: Timestamp outside the tolerance zone ({ahead:.0f} s in the future; "
            f"the tolerance is {TOLERANCE} s either way)"
        )
    try:
        event = json.loads(body, parse_constant=_not_a_number, parse_float=_finite_float)
    except ValueError as exc:
        raise BadRequest(f"the body is not a Stripe event ({exc})") from None
    if not isinstance(event, dict):
        raise BadRequest("the body is not a Stripe event (not an object)")
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255:
        raise BadRequest("the Stripe event has no usable `id`")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 200:
        raise BadRequest("the Stripe event has no usable `type`")
    try:
        check_payload(event, "body")
    except ValidationFailed as exc:
        raise BadRequest(exc.detail) from None
    return event


async def receive_stripe(
    session: AsyncSession, *, event: dict[str, Any], body: bytes, ctx: RequestContext
) -> Received:
    """Store a verified event once; process it the first time; count a replay."""
    created = event.get("created")
    created_at = (
        datetime.fromtimestamp(created, UTC) if isinstance(created, int) and not isinstance(created, bool)
        and 0 <= created < 32_503_680_000 else None
    )  # fmt: skip
    now = utcnow()
    statement: Any = (
        pg_insert(InboundEvent)
        .values(
            id=new_id(), source=SOURCE, external_id=event["id"], event_type=event["type"],
            livemode=event.get("livemode") is True, event_created_at=created_at, payload=event,
            status=InboundStatus.received, attempts=0, duplicates=0, received_at=now, updated_at=now,
        )
        .on_conflict_do_update(
            index_elements=["source", "external_id"],
            set_={"duplicates": InboundEvent.duplicates + 1, "updated_at": now},
        )
        .returning(InboundEvent.id, literal_column("xmax = 0").label("inserted"))
    )  # fmt: skip
    row = (await session.execute(statement)).one()
    stored = await session.get(InboundEvent, row.id, populate_existing=True)
    assert stored is not None
    outcome = InboundOutcome.accepted if row.inserted else InboundOutcome.duplicate
    await _record_request(
        session, body=body, outcome=outcome, ctx=ctx, event_id=stored.id, external_id=stored.external_id
    )
    if row.inserted:
        await dispatch.process(session, stored)
    return Received(stored, duplicate=not row.inserted)


async def list_events(
    session: AsyncSession,
    *,
    cursor: str | None,
    limit: int,
    status: InboundStatus | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
) -> list[InboundEvent]:
    """Newest first; ``event_type`` exact or a ``prefix.*``."""
    after = decode_cursor(cursor)
    query = select(InboundEvent).order_by(InboundEvent.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(InboundEvent.id < after)
    if status is not None:
        query = query.where(InboundEvent.status == status)
    if event_type is not None and event_type != "*":
        if event_type.endswith(".*"):
            prefix = event_type[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(InboundEvent.event_type.like(prefix + "%", escape="\\"))
        else:
            query = query.where(InboundEvent.event_type == event_type)
    if since is not None:
        query = query.where(InboundEvent.received_at >= since)
    return list((await session.scalars(query)).all())


async def list_requests(
    session: AsyncSession, *, cursor: str | None, limit: int, outcome: InboundOutcome | None = None
) -> list[InboundRequest]:
    after = decode_cursor(cursor)
    query = select(InboundRequest).order_by(InboundRequest.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(InboundRequest.id < after)
    if outcome is not None:
        query = query.where(InboundRequest.outcome == outcome)
    return list((await session.scalars(query)).all())


async def get_event(session: AsyncSession, event_id: uuid.UUID, *, lock: bool = False) -> InboundEvent:
    event = await session.get(InboundEvent, event_id, with_for_update=lock)
    if event is None:
        raise NotFound("inbound event not found")
    return event


async def reprocess(
    session: AsyncSession,
    *,
    event_id: uuid.UUID,
    actor: Actor,
    ctx: RequestContext,
    reason: str | None = None,
) -> InboundEvent:
    """Apply a stored event again; ``reason`` (the console asks staff for one) goes in the entry."""
    event = await get_event(session, event_id, lock=True)
    before = {"status": event.status.value, "attempts": event.attempts}
    await dispatch.process(session, event)
    await audit.record(
        session, action="inbound_event.reprocessed", actor=actor, ctx=ctx, organization_id=None,
        resource_type="inbound_event", resource_id=event.id, before=before,
        after={"status": event.status.value, "attempts": event.attempts},
        metadata={
            "source": event.source, "external_id": event.external_id, "type": event.event_type,
            **({"reason": reason} if reason else {}),
        },
    )  # fmt: skip
    return event
