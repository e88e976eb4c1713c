"""The worker's HTTP connections: per origin, keep-alive httpx transports of a few connections each.

Two measured reasons for the shape:

- One httpx connection pool with many connections spends most of its time in itself: httpcore
  rescans every connection and every waiting request whenever a request starts or ends, so the
  cost per request grows with the pool (here: 1,262 requests/s through one pool of 8 connections,
  383/s through one of 64). Each transport ("lane") therefore holds at most 4 connections.
- A pool is shared by whatever goes through it, so a slow receiver holding its connections would
  keep another receiver's requests queued behind it. Lanes belong to one origin
  (``scheme://host:port``): a slow customer only ever waits on its own connections.

An origin gets a new lane when all of its lanes are full, up to its share (the worker's
per-endpoint concurrency); the least recently used idle origins are closed past ``max_origins``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict
from dataclasses import dataclass

import httpx

from api.webhooks import ssrf

CONNECTIONS_PER_LANE = 4


@dataclass(slots=True)
class Lane:
    transport: httpx.AsyncHTTPTransport
    busy: int = 0


class Lanes:
    def __init__(
        self, *, allow_private: bool, per_origin: int, timeout: float, max_origins: int = 2000
    ) -> None:
        self.allow_private = allow_private
        self.span = max(1, -(-per_origin // CONNECTIONS_PER_LANE))
        self.max_origins = max_origins
        self.timeout = httpx.Timeout(timeout).as_dict()
        self._context: ssl.SSLContext = httpx.create_ssl_context(trust_env=False)  # one CA load
        self._origins: OrderedDict[str, list[Lane]] = OrderedDict()
        self._urls: dict[str, httpx.URL] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def lane(self, origin: str) -> Lane:
        """The least busy of the origin's lanes, or a new one when they are all full."""
        lanes = self._origins.get(origin)
        if lanes is None:
            lanes = self._origins[origin] = []
            self._evict()
        else:
            self._origins.move_to_end(origin)
        best = min(lanes, key=lambda lane: lane.busy) if lanes else None
        if best is None or (best.busy >= CONNECTIONS_PER_LANE and len(lanes) < self.span):
            best = Lane(
                ssrf.guarded_transport(
                    allow_private=self.allow_private,
                    connections=CONNECTIONS_PER_LANE,
                    ssl_context=self._context,
                )
            )
            lanes.append(best)
        return best

    def _evict(self) -> None:
        for origin in list(self._origins)[: max(0, len(self._origins) - self.max_origins)]:
            lanes = self._origins[origin]
            if any(lane.busy for lane in lanes):
                continue
            del self._origins[origin]
            for lane in lanes:
                task = asyncio.get_running_loop().create_task(lane.transport.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def url(self, text: str) -> httpx.URL:
        """Parsed once per endpoint URL (httpx parses a URL on every request otherwise)."""
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) > 10_000:
                self._urls.clear()
            parsed = self._urls[text] = httpx.URL(text)
        return parsed

    async def aclose(self) -> None:
        for lanes in self._origins.values():
            for lane in lanes:
                await lane.transport.aclose()
        self._origins.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
