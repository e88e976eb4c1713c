"""The worker's HTTP connections: keep-alive httpx transports of a few connections each ("lanes").

One httpx connection pool with hundreds of connections spends most of its time in its pool: httpcore
re-scans every connection and every waiting request each time a request starts or ends, so its
cost per request grows with the pool (measured here: 1,262 requests/s through one client of 8
connections, 383/s through one of 64). Lanes keep each pool small. An origin is served by a fixed
set of lanes (so its connections are reused), the least busy of them taking each request.
"""

from __future__ import annotations

import zlib

import httpx

from api.webhooks import ssrf

CONNECTIONS_PER_LANE = 4


class Lanes:
    def __init__(self, *, allow_private: bool, connections: int, per_origin: int, timeout: float) -> None:
        count = max(1, -(-connections // CONNECTIONS_PER_LANE))
        context = httpx.create_ssl_context(trust_env=False)  # one CA bundle load, shared
        self.transports = [
            ssrf.guarded_transport(
                allow_private=allow_private, connections=CONNECTIONS_PER_LANE, ssl_context=context
            )
            for _ in range(count)
        ]
        self.timeout = httpx.Timeout(timeout).as_dict()
        self._urls: dict[str, httpx.URL] = {}
        self.busy = [0] * count
        #: How many lanes one origin may spread over: its share of the connections.
        self.span = max(1, min(count, per_origin // CONNECTIONS_PER_LANE))

    def pick(self, origin: str) -> int:
        """The least busy of the origin's lanes (stable across processes: crc32, not hash())."""
        count = len(self.transports)
        base = zlib.crc32(origin.encode()) % count
        best = base
        for step in range(1, self.span):
            lane = (base + step) % count
            if self.busy[lane] < self.busy[best]:
                best = lane
        return best

    def url(self, text: str) -> httpx.URL:
        """Parsed once per endpoint URL (httpx parses a URL on every request otherwise)."""
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) > 10_000:
                self._urls.clear()
            parsed = self._urls[text] = httpx.URL(text)
        return parsed

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()
