"""``api/auth/cache.py``'s ``TtlCache``: one ``get_or_load`` for every cached lookup, whose hit
path builds and suspends nothing; and the two membership checks built on it (the org guard's
``active_role`` and flag evaluation's ``org_access_cached``) sharing one entry per membership."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import event

from api.auth import cache
from api.auth import services as auth
from api.auth.cache import TtlCache
from api.auth.context import Principal
from api.auth.permissions import Permission
from api.db.engine import make_async_engine, make_sessionmaker
from api.db.reads import Reader, make_read_pool
from api.errors import Forbidden, NotFound
from api.members.models import OrgRole
from api.tokens.models import TokenKind
from tests.harness import OrgWorld


def finished_at_once(coro: Any) -> Any:
    """The value of a coroutine that returns at its first step (never suspends); fails otherwise."""
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    return done.value.value


def test_a_hit_is_answered_without_calling_the_load_or_suspending() -> None:
    calls: list[tuple[str, int]] = []

    async def load(name: str, n: int) -> str:
        calls.append((name, n))
        await asyncio.sleep(0)
        return f"{name}-{n}"

    async def main() -> None:
        entries: TtlCache[str, str] = TtlCache()
        assert await entries.get_or_load("k", load, "v", 1) == "v-1"  # a miss: the load, with its args
        assert calls == [("v", 1)]
        assert finished_at_once(entries.get_or_load("k", load, "v", 2)) == "v-1"  # a hit
        assert calls == [("v", 1)]

    asyncio.run(main())


def test_misses_together_share_one_load_and_its_error_which_is_not_kept() -> None:
    calls: list[int] = []

    async def load(n: int) -> int:
        calls.append(n)
        await asyncio.sleep(0.01)
        if n < 0:
            raise LookupError("refused")
        return n

    async def main() -> None:
        entries: TtlCache[str, int] = TtlCache()
        assert await asyncio.gather(*[entries.get_or_load("k", load, 7) for _ in range(5)]) == [7] * 5
        assert calls == [7]
        refused = await asyncio.gather(
            *[entries.get_or_load("bad", load, -1) for _ in range(3)], return_exceptions=True
        )
        assert [type(r) for r in refused] == [LookupError] * 3 and calls == [7, -1]
        assert entries.get("bad") is None  # refusals are never cached: the next asks again
        with pytest.raises(LookupError):
            await entries.get_or_load("bad", load, -1)
        assert calls == [7, -1, -1]

    asyncio.run(main())


def test_a_value_loaded_across_a_clear_is_not_kept_and_an_expired_one_is_loaded_again() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(n: int) -> int:
        started.set()
        await release.wait()
        return n

    async def fast(n: int) -> int:
        return n

    async def main() -> None:
        entries: TtlCache[str, int] = TtlCache()
        loading = asyncio.ensure_future(entries.get_or_load("k", slow, 1))
        await started.wait()
        entries.clear()  # an invalidation commits while the lookup is in flight
        release.set()
        assert await loading == 1  # its caller gets the answer...
        assert entries.get("k") is None  # ...but it is not kept: it may predate the change
        expired: TtlCache[str, int] = TtlCache(ttl=-1.0)  # every entry is past its time at once
        assert await expired.get_or_load("k", fast, 1) == 1
        assert await expired.get_or_load("k", fast, 2) == 2

    asyncio.run(main())


def test_the_guard_and_flag_evaluation_share_one_cached_grant_and_one_lookup_per_miss(
    database_url: str, org: OrgWorld
) -> None:
    """``active_role`` (the org guard, on the reader) and ``org_access_cached`` (flag evaluation, in
    a session) answer from the same entry of ``cache.memberships`` without a read; requests that
    miss together share one lookup, through the reader or a session alike; a refusal is not kept."""
    org_id = uuid.UUID(org.id)
    viewer = Principal(token_id=uuid.uuid4(), kind=TokenKind.user, user_id=uuid.UUID(org.user_ids["viewer"]))
    stranger = Principal(token_id=uuid.uuid4(), kind=TokenKind.user, user_id=uuid.uuid4())

    async def main() -> None:
        pool = make_read_pool(database_url)
        await pool.open()
        engine = make_async_engine(database_url)
        sessions = make_sessionmaker(engine)
        reads: list[str] = []
        session_reads: list[str] = []
        reader = Reader(pool)
        reader.observers.append(reads.append)

        def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            session_reads.append(statement)

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            cache.invalidate()
            found = await asyncio.gather(
                *[auth.read_access(reader, viewer, org_id, Permission.read_org) for _ in range(5)]
            )
            assert {a.role for a in found} == {OrgRole.viewer} and len(reads) == 1
            # Cached: the guard's hit finishes at once; flag evaluation opens no session for it.
            assert finished_at_once(auth.active_role(reader, viewer, org_id)) is OrgRole.viewer
            access = await auth.org_access_cached(sessions, viewer, org_id, Permission.read_org)
            assert access.role is OrgRole.viewer
            with pytest.raises(Forbidden):  # the cached role still answers for what it may do
                await auth.org_access_cached(sessions, viewer, org_id, Permission.manage_org)
            assert len(reads) == 1 and session_reads == []
            cache.invalidate()
            found = await asyncio.gather(
                *[auth.org_access_cached(sessions, viewer, org_id, Permission.read_org) for _ in range(5)]
            )
            assert {a.role for a in found} == {OrgRole.viewer} and len(session_reads) == 1
            assert finished_at_once(auth.active_role(reader, viewer, org_id)) is OrgRole.viewer
            for _ in range(2):  # a non-member is looked up every time: refusals are never kept
                with pytest.raises(NotFound):
                    await auth.org_access_cached(sessions, stranger, org_id, Permission.read_org)
                with pytest.raises(NotFound):
                    await auth.read_access(reader, stranger, org_id, Permission.read_org)
            assert len(session_reads) == 3 and len(reads) == 3
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)
            cache.invalidate()
            await engine.dispose()
            await pool.close()

    asyncio.run(main())
