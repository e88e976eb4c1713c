"""A short-lived in-process cache of authenticated principals.

Ingest keys are presented on every event request; looking each one up costs a transaction. A
principal is kept for ``TTL`` seconds. Anything that can make a credential invalid (revocation,
suspension, deletion, a platform-role change) clears the cache of the process that made it at
once; other API processes see the change within ``TTL``.
"""

from __future__ import annotations

import time

from api.auth.context import Principal

TTL = 2.0
MAX_ENTRIES = 50_000


class PrincipalCache:
    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, Principal]] = {}

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


#: The process's cache. Module state on purpose: invalidation must reach every app in the process.
principals = PrincipalCache()


def invalidate() -> None:
    """Call when a credential may have stopped being valid."""
    principals.clear()
