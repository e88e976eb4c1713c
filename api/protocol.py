"""The HTTP/1.1 protocol the API is served with: uvicorn's httptools protocol with read deadlines.

uvicorn closes a keep-alive connection idle between requests (``timeout_keep_alive``), but once a
request has begun it waits for its headers and its body for ever: a client dripping one byte a
second holds a connection, and a task, as long as it likes. Here

- the headers of a request must be complete ``header_timeout`` seconds after its first byte (for a
  connection's first request: after the connection opened). A client that sent part of them is
  answered ``408`` and the connection closed; one that sent nothing is closed without a word (an
  idle connection, as at the end of keep-alive);
- its body must be complete ``body_timeout`` seconds after the headers. If no answer has begun, the
  client gets a ``408`` problem document and the connection is closed; the application sees the
  client disconnect, and the request's log line says ``request body timed out`` (status 408). A
  body still arriving after the answer (a refusal answered early) is cut off the same way.

Only the stock httptools protocol is extended (``keel serve`` forces it, so what runs is what is
tested); the deadlines ride on the uvicorn ``Config`` (:class:`ServerConfig`), which uvicorn hands
to every worker process it starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE
from api.observability import CUT_OFF

#: Seconds a cut-off connection keeps reading (and discarding) after its 408 before it closes:
#: closing with unread bytes would send a reset, which can destroy the answer before it is read.
LINGER = 2.0
access_log = logging.getLogger("keel.access")


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus the two read deadlines (seconds) the protocol enforces."""

    def __init__(
        self,
        app: Any,
        *,
        header_timeout: float,
        body_timeout: float,
        **options: Any,
    ) -> None:
        super().__init__(app, http=KeelHttpProtocol, **options)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout


def timeout_answer(detail: str, request_id: str | None = None) -> bytes:
    """A complete ``408`` answer (problem document, connection closed), written by the protocol itself."""
    problem: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE_BASE}request-timeout",
        "title": "Request timeout",
        "status": 408,
        "detail": detail,
    }
    if request_id:
        problem["request_id"] = request_id
    body = json.dumps(problem).encode()
    head = [
        b"HTTP/1.1 408 Request Timeout",
        b"content-type: " + PROBLEM_MEDIA_TYPE.encode(),
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if request_id:
        head.append(b"x-request-id: " + request_id.encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class KeelHttpProtocol(HttpToolsProtocol):
    """httptools' protocol with a deadline for each request's headers and one for its body."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, ServerConfig), "served through api.server.server_config"
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self._deadline: asyncio.TimerHandle | None = None
        #: Part of a request's head has arrived and the rest has not.
        self._in_head = False
        self._began = 0.0
        #: Cut off: whatever still arrives is dropped until the connection closes.
        self._lingering = False

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._began = time.monotonic()
        self._arm(self.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._lingering:
            super().data_received(data)

    def _cut_off(self, answer: bytes | None) -> None:
        """Send ``answer`` (if any) and close: our side at once, the connection after ``LINGER``."""
        if answer is None or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write(answer)
        self.transport.write_eof()
        self._lingering = True
        self._deadline = self.loop.call_later(LINGER, self.transport.close)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._deadline is None:  # a later request on the connection: its head starts now
            self._began = time.monotonic()
            self._arm(self.header_timeout, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        # Disarmed at once by on_message_complete when there is no body (same parser call).
        self._arm(self.body_timeout, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._in_head:
            self.transport.close()  # idle: nothing to answer
            return
        detail = f"the request headers did not arrive within {self.header_timeout:g} s"
        self._cut_off(timeout_answer(detail))
        access_log.info(
            "request headers timed out",
            extra={
                "fields": {
                    "status": 408,
                    "client": self.client[0] if self.client else None,
                    "duration_ms": round((time.monotonic() - self._began) * 1000, 2),
                }
            },
        )

    def _body_too_slow(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        answer = None
        if not cycle.response_started:
            state = cycle.scope.setdefault("state", {})
            detail = f"the request body did not arrive within {self.body_timeout:g} s"
            state[CUT_OFF] = "request body timed out"
            answer = timeout_answer(detail, state.get("request_id"))
        # The application's receive() now answers http.disconnect and its answer goes nowhere.
        if not cycle.response_complete:
            cycle.disconnected = True
        cycle.message_event.set()
        self._cut_off(answer)
