from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import State

from api.auth import services as auth
from api.auth.context import Principal
from api.bodies import MAX_JSON_DEPTH, TEXT_PLAIN_JSON, check_json
from api.deps import provide_context
from api.errors import BadRequest, Forbidden, PayloadTooLarge
from api.events import services
from api.events.body import decode_batch, read_limited_body
from api.events.schemas import MAX_BATCH_EVENTS, MAX_REQUEST_BYTES, EventDoc, EventIn, IngestResult
from api.limits import charge_events
from api.tokens.models import TokenKind

INGEST_KEYS = {TokenKind.org_ingest, TokenKind.platform_ingest}


def _require_ingest_key(principal: Principal) -> None:
    if principal.kind not in INGEST_KEYS:
        raise Forbidden("events are sent with an org or platform ingest key, not a user token")


def _origin(request: Request[Any, Any, Any]) -> services.Origin:
    ctx = provide_context(request)
    return services.Origin(ip=ctx.ip, user_agent=ctx.user_agent)


class EventController(Controller):
    path = "/v1/events"
    #: Browsers call these routes (CORS), publishable keys reach them.
    opt = auth.BROWSER_ROUTE
    tags = ["events"]
    request_max_body_size = MAX_REQUEST_BYTES

    @post(
        "/",
        status_code=200,
        summary="Record one event",
        description="Authenticated by an ingest key. Answers after commit. A duplicate message_id is "
        "counted, not stored again. `Content-Encoding: gzip` is accepted, and `text/plain` bodies "
        "are read as JSON (what `navigator.sendBeacon` sends).",
        opt={"request_body": EventIn, TEXT_PLAIN_JSON: True},
    )
    async def one(self, request: Request[Any, Any, Any], principal: Principal, state: State) -> IngestResult:
        _require_ingest_key(principal)
        charge_events(state.limits, principal, 1, request.scope)
        body = await read_limited_body(request, MAX_REQUEST_BYTES)
        if not body.strip():
            raise BadRequest("the request body is empty; send one event as JSON")
        check_json(body)
        result = await services.ingest(
            state.event_writer,
            [body],
            principal=principal,
            partitions=state.partitions,
            origin=_origin(request),
            raise_rejected=True,
        )
        return result

    @post(
        "/batch",
        status_code=200,
        summary="Record a batch of up to 5,000 events",
        description='`{"events": [...], "sent_at": optional}`. Valid items are stored even when '
        "others are rejected; each rejection names its index and reason. Limits: 5,000 events, "
        f"32 KB an event, 5 MB a request (after gzip decompression), {MAX_JSON_DEPTH} levels of "
        "nesting in an event. `text/plain` bodies are read as JSON (what `navigator.sendBeacon` sends).",
        opt={"request_body": EventDoc, TEXT_PLAIN_JSON: True},
    )
    async def batch(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> IngestResult:
        _require_ingest_key(principal)
        body = await read_limited_body(request, MAX_REQUEST_BYTES)
        envelope = decode_batch(body)
        if len(envelope.events) > MAX_BATCH_EVENTS:
            raise PayloadTooLarge(
                f"a batch holds at most {MAX_BATCH_EVENTS} events; this one has {len(envelope.events)}"
            )
        charge_events(state.limits, principal, len(envelope.events), request.scope)
        return await services.ingest(
            state.event_writer, envelope.events, principal=principal, partitions=state.partitions,
            origin=_origin(request), batch_sent_at=envelope.sent_at,
        )  # fmt: skip
