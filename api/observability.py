"""Structured JSON logs (one line per request) and request ids."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: `keel serve` configures logging without importing litestar
    from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Key of the request's state under which handling leaves extra answer headers ``[(name, value)]``.
RESPONSE_HEADERS = "keel.response_headers"
#: Key of the request's state where the server notes that it cut the request off (the log message).
CUT_OFF = "keel.cut_off"
access_log = logging.getLogger("keel.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields passed with ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every request an id (the caller's ``X-Request-ID`` when well-formed), echo it, log the request.

    Tokens never reach the log: only method, path, status, duration and ids are written. Headers
    that the request's handling left in its state under ``RESPONSE_HEADERS`` (the rate limits')
    are added to the answer. A client that goes away before the answer is sent is logged as
    ``client disconnected`` with status 499 (nginx's "client closed request"), whatever the app
    tried to answer afterwards; a body the server cut off (``CUT_OFF``) as its 408. It wraps
    the app's ASGI handler (``create_app``), outside routing, so unknown routes are logged too.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        supplied = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = supplied if REQUEST_ID.match(supplied) else str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        answered = disconnected = False

        async def receive_wrapper() -> ReceiveMessage:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                disconnected = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                if not disconnected:
                    status = message["status"]
                extra = state.get(RESPONSE_HEADERS)
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *(extra or ()),
                ]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        try:
            await app(scope, receive_wrapper, send_wrapper)
        finally:
            params = scope.get("path_params") or {}
            cut_off = state.get(CUT_OFF)
            if cut_off:
                msg, status = cut_off, 408
            elif disconnected:
                msg, status = "client disconnected", 499
            else:
                msg = "request"
            access_log.info(
                msg,
                extra={
                    "fields": {
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "org_id": str(params["org_id"]) if "org_id" in params else None,
                    }
                },
            )

    return middleware
