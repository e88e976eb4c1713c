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
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
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

    Tokens never reach the log: only method, path, status, duration and ids are written. It wraps
    the app's ASGI handler (``create_app``), outside routing, so unknown routes are logged too.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        supplied = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = supplied if REQUEST_ID.match(supplied) else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            params = scope.get("path_params") or {}
            access_log.info(
                "request",
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
