"""``/segment/v1/...``: Segment's HTTP Tracking API, answered as Segment answers it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State

from api.auth.context import Principal
from api.auth.services import BASIC_WRITE_KEY, BROWSER_ROUTE
from api.bodies import TEXT_PLAIN_JSON, check_json, utf8_problem
from api.deps import PUBLIC
from api.errors import BadRequest, PayloadTooLarge, ValidationFailed
from api.events.body import decode_envelope, read_limited_body
from api.events.controllers import _origin, _require_ingest_key
from api.events.schemas import MAX_BATCH_EVENTS, MAX_REQUEST_BYTES
from api.events.services import ItemRejected
from api.limits import charge_events
from api.segment import services
from api.segment.schemas import (
    ClientMetrics,
    ClientMetricsDoc,
    SegmentAnswer,
    SegmentBatch,
    SegmentBatchDoc,
    SegmentMessage,
    SegmentMessageDoc,
)

_decode_batch = msgspec.json.Decoder(SegmentBatch)
_decode_client_metrics = msgspec.json.Decoder(ClientMetrics)
#: analytics.js sends at most 20 metrics a request (its queue), each well under 1 KB.
MAX_CLIENT_METRICS_BYTES = 64 * 1024
_AUTH = (
    "Authenticated as Segment's API is: HTTP Basic with an ingest key as the user name and an empty "
    "password (what the SDKs send for a write key), or `Authorization: Bearer <ingest key>`. "
)
_ANSWER = (
    'Answers `200 {"success": true}` once the request is committed. A refused call (unknown '
    "organization, invalid field...) is recorded as an ingestion warning "
    "(`GET /v1/orgs/{org_id}/ingestion-warnings`); in a batch it never fails the batch, as Segment "
    "answers; a call sent alone to its own route is answered 4xx naming the field, as `POST /v1/events` is. "
    "`Content-Encoding: gzip` and `text/plain` bodies are accepted."
)
_OPT = {TEXT_PLAIN_JSON: True, BASIC_WRITE_KEY: True}
# Each call also answers at the one-letter path Segment's browser SDK (analytics.js) posts to
# (``/t``, ``/i``, ``/g``, ``/p``, ``/s``, ``/a``; ``/b`` for its batching mode): the same handler.


async def _single(
    request: Request[Any, Any, Any], principal: Principal, state: State, kind: str
) -> SegmentAnswer:
    _require_ingest_key(principal)
    charge_events(state.limits, principal, 1, request.scope)
    body = await read_limited_body(request, MAX_REQUEST_BYTES)
    if not body.strip():
        raise BadRequest(f"the request body is empty; send one {kind} call as JSON")
    check_json(body)
    try:
        call: SegmentMessage | ItemRejected = services.decode_call(body, kind)
    except ItemRejected as exc:
        if exc.kind is BadRequest:
            raise exc.problem() from None  # not JSON at all: malformed, as Segment answers it
        call = exc
    # A call sent alone is answered for itself, as Keel's `POST /v1/events` is: refused, it is a
    # precise 4xx (and an ingestion warning); a batch's refusals never fail the batch.
    await services.ingest_one(
        state.event_writer, body, call, principal=principal, partitions=state.partitions,
        origin=_origin(request),
    )  # fmt: skip
    return SegmentAnswer()


def _doc(kind: str) -> dict[str, Any]:
    return {
        "status_code": 200,
        "summary": f"Segment {kind} call",
        "description": _AUTH + _ANSWER,
        "opt": {"request_body": SegmentMessageDoc, **_OPT},
    }


class SegmentController(Controller):
    path = "/segment/v1"
    #: Browsers call these routes (CORS), publishable keys reach them.
    opt = BROWSER_ROUTE
    tags = ["segment"]
    request_max_body_size = MAX_REQUEST_BYTES

    @post(
        ["/batch", "/b"],
        status_code=200,
        summary="Segment batch of calls",
        description=_AUTH
        + _ANSWER
        + f" Limits: {MAX_BATCH_EVENTS} calls, 32 KB a call, 5 MB a request after decompression "
        "(Segment's own are 500 KB a batch and 32 KB a call: anything Segment accepts, Keel does).",
        opt={"request_body": SegmentBatchDoc, **_OPT},
    )
    async def batch(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> SegmentAnswer:
        _require_ingest_key(principal)
        body = await read_limited_body(request, MAX_REQUEST_BYTES)
        try:
            envelope = decode_envelope(body, _decode_batch, "batch")
        except ValidationFailed:
            # Segment's envelope ignores unknown keys, which the decoder skips without reading their
            # UTF-8: a body that is not UTF-8 is named as such, as on every other route.
            problem = utf8_problem(body)
            if problem is not None:
                raise BadRequest(f"the request body {problem}") from None
            raise
        if len(envelope.batch) > MAX_BATCH_EVENTS:
            raise PayloadTooLarge(
                f"a batch holds at most {MAX_BATCH_EVENTS} calls; this one has {len(envelope.batch)}"
            )
        charge_events(state.limits, principal, len(envelope.batch), request.scope)
        await services.ingest_batch(
            state.event_writer, body, envelope.batch, principal=principal, partitions=state.partitions,
            origin=_origin(request), batch_sent_at=envelope.sent_at, batch_context=envelope.context,
            batch_integrations=envelope.integrations,
        )  # fmt: skip
        return SegmentAnswer()

    @post(["/track", "/t"], **_doc("track"))
    async def track(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> SegmentAnswer:
        return await _single(request, principal, state, "track")

    @post(["/identify", "/i"], **_doc("identify"))
    async def identify(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> SegmentAnswer:
        return await _single(request, principal, state, "identify")

    @post(["/group", "/g"], **_doc("group"))
    async def group(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> SegmentAnswer:
        return await _single(request, principal, state, "group")

    @post(["/page", "/p"], **_doc("page"))
    async def page(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> SegmentAnswer:
        return await _single(request, principal, state, "page")

    @post(["/screen", "/s"], **_doc("screen"))
    async def screen(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> SegmentAnswer:
        return await _single(request, principal, state, "screen")

    @post(["/alias", "/a"], **_doc("alias"))
    async def alias(
        self, request: Request[Any, Any, Any], principal: Principal, state: State
    ) -> SegmentAnswer:
        return await _single(request, principal, state, "alias")

    @post(
        "/m",
        status_code=200,
        summary="analytics.js's own telemetry (accepted and discarded)",
        description="Segment's browser SDK posts its own performance metrics to `<apiHost>/m` every 30 s, "
        'with no key (`text/plain`, `{"series": [...]}`): pointed at Keel, without this route every page '
        "would log a failed cross-origin request. Keel answers as Segment does and keeps nothing. No "
        f"credentials; a body over {MAX_CLIENT_METRICS_BYTES // 1024} KB is a 413, one that is not that "
        "shape a 400/422.",
        opt={**PUBLIC, TEXT_PLAIN_JSON: True, "request_body": ClientMetricsDoc},
    )
    async def client_metrics(self, request: Request[Any, Any, Any]) -> SegmentAnswer:
        body = await read_limited_body(request, MAX_CLIENT_METRICS_BYTES)
        if body.strip():
            check_json(body)  # 64 KB at most: UTF-8 and depth checked whole, skipped keys included
        decode_envelope(body, _decode_client_metrics, "series")
        return SegmentAnswer()
