"""Local webhook receivers: small real HTTP/1.1 servers on 127.0.0.1, on ports chosen at run time.

Each runs its own asyncio loop in a background thread and answers through a function the test
gives it, so a test can script "fail twice, then succeed", "sleep", "410", and read back exactly
what arrived and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 410: "Gone", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}  # fmt: skip


@dataclass
class Arrival:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Respond = Callable[[Arrival, int], Reply]


def always(status: int = 200, **kwargs: object) -> Respond:
    return lambda arrival, n: Reply(status, **kwargs)  # type: ignore[arg-type]


def script(*replies: Reply) -> Respond:
    """The n-th request gets the n-th reply; the last one repeats."""
    return lambda arrival, n: replies[min(n, len(replies) - 1)]


class Receiver:
    def __init__(self, respond: Respond | None = None) -> None:
        self.respond = respond or always(200)
        self.arrivals: list[Arrival] = []
        self.arrived = threading.Event()
        #: Requests being answered right now, and the most there ever were at once.
        self.in_progress = 0
        self.max_in_progress = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Receiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the receiver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def wait_for(self, count: int, timeout: float = 20) -> list[Arrival]:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.arrivals)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        assert self._server is not None
        self._server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                arrival = Arrival(method, path, headers, body, time.monotonic())
                n = len(self.arrivals)
                self.arrivals.append(arrival)
                self.arrived.set()
                reply = self.respond(arrival, n)
                self.in_progress += 1
                self.max_in_progress = max(self.max_in_progress, self.in_progress)
                try:
                    if reply.delay:
                        await asyncio.sleep(reply.delay)
                finally:
                    self.in_progress -= 1
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write(
                    f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}\r\n"
                    f"content-length: {len(reply.body)}\r\ncontent-type: text/plain\r\n{extra}\r\n".encode()
                    + reply.body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the receiver is shutting down
        finally:
            writer.close()


# --- SIEM-compatible receivers (audit streams) -----------------------------------------------------
# Each answers as the real service does: its path, its auth header, its status codes and bodies.


def splunk_hec(token: str, *, fail: Callable[[int], Reply | None] | None = None) -> Respond:
    """Splunk's HTTP Event Collector: ``POST /services/collector/event`` with ``Authorization: Splunk <token>``;
    200 ``{"text":"Success","code":0}``, 401 without a token, 403 with a wrong one, 400 for a body
    that is not concatenated JSON event objects. ``fail(n)`` may script a failure for request n."""
    import json

    def respond(arrival: Arrival, n: int) -> Reply:
        if fail is not None and (reply := fail(n)) is not None:
            return reply
        if arrival.method != "POST" or arrival.path != "/services/collector/event":
            return Reply(404, b'{"text":"The requested URL was not found on this server.","code":404}')
        auth = arrival.headers.get("authorization", "")
        if not auth.startswith("Splunk "):
            return Reply(401, b'{"text":"Token is required","code":2}')
        if auth != f"Splunk {token}":
            return Reply(403, b'{"text":"Invalid token","code":4}')
        try:
            events = hec_events(arrival.body)
        except ValueError:
            return Reply(400, b'{"text":"Invalid data format","code":6}')
        if not events or any("event" not in e for e in events):
            return Reply(400, b'{"text":"Event field is required","code":12}')
        return Reply(200, json.dumps({"text": "Success", "code": 0}).encode())

    return respond


def hec_events(body: bytes) -> list[dict[str, object]]:
    """HEC's batch form: JSON objects one after another (whitespace between them allowed)."""
    import json

    decoder, text, at, out = json.JSONDecoder(), body.decode(), 0, []
    while at < len(text):
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            break
        value, at = decoder.raw_decode(text, at)
        out.append(value)
    return out


def datadog_logs(api_key: str, *, fail: Callable[[int], Reply | None] | None = None) -> Respond:
    """Datadog's logs intake v2: ``POST /api/v2/logs`` with ``DD-API-KEY``; 202 ``{}``, 403 for a
    missing or wrong key, 400 for a body that is not a JSON array of log objects."""
    import json

    def respond(arrival: Arrival, n: int) -> Reply:
        if fail is not None and (reply := fail(n)) is not None:
            return reply
        if arrival.method != "POST" or arrival.path != "/api/v2/logs":
            return Reply(404, b'{"errors":["Not found"]}')
        if arrival.headers.get("dd-api-key") != api_key:
            return Reply(403, b'{"errors":["Forbidden"]}')
        try:
            logs = json.loads(arrival.body)
        except ValueError:
            return Reply(400, b'{"errors":["Bad Request"]}')
        if not isinstance(logs, list) or not all(isinstance(x, dict) and "message" in x for x in logs):
            return Reply(400, b'{"errors":["Bad Request"]}')
        return Reply(202, b"{}")

    return respond
