"""A short-lived in-process cache of authenticated principals.

Ingest keys are presented on every event request; looking each one up costs a transaction. A
principal is kept for ``TTL`` seconds. Anything that can make a credential invalid (revocation,
suspension, deletion, a platform-role change) clears the cache of the process that made it at
once; other API processes see the change within ``TTL``.

A missing entry is looked up once however many requests want it at the same moment: at hundreds
of requests a second, every request arriving during the lookup used to make its own, and each
expiry (every ``TTL``) stalled the ingest path for a few hundred milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from api.auth.context import Principal

TTL = 2.0
MAX_ENTRIES = 50_000


class PrincipalCache:
    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        # Lookups in flight, per event loop (tests run several apps, each on its own loop).
        self._loading: dict[tuple[int, bytes], asyncio.Task[Principal]] = {}
        #: Moves on every clear(): a lookup that started before an invalidation is not cached.
        self._generation = 0

    def get(self, digest: bytes) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        expires, principal = entry
        if expires < time.monotonic():
            self._entries.pop(digest, None)
            return None
        return principal

    def put(self, digest: bytes, principal: Principal) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()
        self._generation += 1

    async def get_or_load(self, digest: bytes, load: Callable[[], Awaitable[Principal]]) -> Principal:
        """The cached principal, or the result of ``load()``, shared by every caller that asks for
        the same digest while it runs. Errors (an unknown token) reach every such caller and are
        not cached."""
        principal = self.get(digest)
        if principal is not None:
            return principal
        key = (id(asyncio.get_running_loop()), digest)
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = task
        # One caller going away (a client disconnecting) must not cancel the others' lookup.
        return await asyncio.shield(task)

    async def _load(self, key: tuple[int, bytes], load: Callable[[], Awaitable[Principal]]) -> Principal:
        generation = self._generation
        try:
            principal = await load()
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]
        if generation == self._generation:
            self.put(key[1], principal)
        return principal


#: The process's cache. Module state on purpose: invalidation must reach every app in the process.
principals = PrincipalCache()


def invalidate() -> None:
    """Call when a credential may have stopped being valid."""
    principals.clear()
