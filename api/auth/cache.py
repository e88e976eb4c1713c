"""Short-lived in-process caches of what authentication and the org check found.

Ingest keys are presented on every event request, flag evaluation is asked on every page a
product renders, and every ``/v1/orgs/{org_id}/...`` request is guarded; looking the caller up
each time costs a round trip (it used to cost a transaction). So a process keeps, for ``TTL``
seconds:

- ``principals``: bearer-token digest -> the authenticated :class:`Principal`;
- ``memberships``: (user id, org id) -> the role of that user's *active* membership of a live,
  *active* organization (only what the org guard or :func:`api.auth.services.org_access`
  granted; refusals are never cached, so a 404 or 403 is always asked of the database).

The bound: a withdrawn access (token revocation, org suspension or deletion, a platform-role
change, a member's removal or role change) stops working everywhere within ``TTL`` seconds of its
commit. The process that makes the change clears both caches once its transaction has committed
(:func:`invalidate_after_commit`; so there it is immediate: a lookup can no longer refill an entry
with the answer of before the commit); every other process, and a change made behind the API's
back (psql), simply waits for the entries to expire.

A missing entry is looked up once however many requests want it at the same moment
(:meth:`TtlCache.get_or_load`): at hundreds of requests a second, every request arriving during
the lookup used to make its own, and each expiry (every ``TTL``) stalled the ingest path for a
few hundred milliseconds. A hit is answered by the same method without suspending: no task, no
closure built for the lookup (its arguments are passed along instead), nothing awaited; every
caller goes through it rather than checking the dictionary by hand first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, TypeVarTuple

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from api.auth.context import Principal
from api.members.models import OrgRole

TTL = 2.0
MAX_ENTRIES = 50_000

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Args = TypeVarTuple("Args")


class TtlCache(Generic[K, V]):
    """A dictionary whose entries vanish ``ttl`` seconds after they were put (at most ``MAX_ENTRIES``)."""

    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._entries: dict[K, tuple[float, V]] = {}
        # Lookups in flight, per event loop (tests run several apps, each on its own loop).
        self._loading: dict[tuple[int, K], asyncio.Task[V]] = {}
        #: Moves on every clear(): a lookup that started before an invalidation is not cached.
        self._generation = 0

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            self._entries.pop(key, None)
            return None
        return value

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, value)

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()
        self._generation += 1

    async def get_or_load(self, key: K, load: Callable[[*Args], Awaitable[V]], *args: *Args) -> V:
        """The cached value, or the result of ``load(*args)``, shared by every caller that asks for
        the same key while it runs. Errors (an unknown token) reach every such caller and are not
        cached, nor is a value loaded across a :meth:`clear` (an invalidation).

        A hit returns at once: the coroutine finishes at its first step, having built nothing
        (``load`` is called only on a miss, with ``args``: no closure per request)."""
        value = self.get(key)
        if value is not None:
            return value
        slot = (id(asyncio.get_running_loop()), key)
        task = self._loading.get(slot)
        if task is None:
            task = asyncio.ensure_future(self._load(slot, load(*args)))
            self._loading[slot] = task
        # One caller going away (a client disconnecting) must not cancel the others' lookup.
        return await asyncio.shield(task)

    async def _load(self, slot: tuple[int, K], loading: Awaitable[V]) -> V:
        generation = self._generation
        try:
            value = await loading
        finally:
            if self._loading.get(slot) is asyncio.current_task():
                del self._loading[slot]
        if generation == self._generation:
            self.put(slot[1], value)
        return value


#: The process's caches. Module state on purpose: invalidation must reach every app in the process.
principals: TtlCache[bytes, Principal] = TtlCache()
memberships: TtlCache[tuple[uuid.UUID, uuid.UUID], OrgRole] = TtlCache()


def invalidate() -> None:
    """Clear both caches now (a change made outside a session: tests, tools)."""
    principals.clear()
    memberships.clear()


#: ``Session.info`` key: this transaction withdrew access, clear the caches when it commits.
_PENDING = "keel.auth_cache.invalidate"


def invalidate_after_commit(session: AsyncSession) -> None:
    """Call when a change in ``session`` may withdraw a credential or a membership: the caches are
    cleared once the transaction has committed (not before, when a concurrent lookup would still
    read the old row and cache it again), and not at all if it rolls back."""
    session.sync_session.info[_PENDING] = True


@event.listens_for(Session, "after_commit")
def _clear_after_commit(session: Session) -> None:
    if session.info.pop(_PENDING, False):
        invalidate()


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
