"""Reads outside a transaction (``api/db/reads.py``) and the member read routes built on them."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import time
import uuid

import httpx
import msgspec
import psycopg
import pytest
import uvloop
from psycopg import pq
from sqlalchemy import Engine, Integer, bindparam, func, literal, select, text

from api.auth import cache
from api.auth import services as auth
from api.auth.secrets import digest
from api.db.reads import Read, Reader, make_read_pool
from api.members.models import MembershipStatus, OrgRole
from api.members.services import READ_MEMBERS, READ_MEMBERS_AFTER
from api.orgs.models import Organization, OrgStatus
from tests.harness import OrgWorld
from tests.test_flags import REQUEST_SLACK, eventually


def with_reader(database_url: str, work, **pool_options: int):  # type: ignore[no-untyped-def]
    """``work(reader, pool)`` run on a read pool of its own (``make_read_pool``'s options)."""

    async def main():  # type: ignore[no-untyped-def]
        pool = make_read_pool(database_url, **pool_options)
        await pool.open()
        try:
            return await work(Reader(pool), pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def test_a_read_connection_refuses_writes_and_holds_no_transaction(database_url: str, org: OrgWorld) -> None:
    async def work(reader: Reader, pool):  # type: ignore[no-untyped-def]
        async with pool.connection() as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await conn.execute("UPDATE organizations SET name = 'taken over' WHERE id = %s", (org.id,))
        row = await reader.first(
            auth.READ_MEMBERSHIP, org_id=uuid.UUID(org.id), user_id=uuid.UUID(org.user_ids["admin"])
        )
        async with pool.connection() as conn:
            status = conn.info.transaction_status
        return row, status

    row, status = with_reader(database_url, work)
    assert status is pq.TransactionStatus.IDLE  # autocommit: nothing left open between reads
    # Results come back as the columns' types make them, enums included.
    assert row == (OrgStatus.active, OrgRole.admin, MembershipStatus.active)
    assert isinstance(row[1], OrgRole)


def test_a_read_takes_exactly_its_parameters_and_keeps_its_constants(
    database_url: str, org: OrgWorld
) -> None:
    read = Read(
        select(Organization.name, Organization.status).where(
            Organization.id == bindparam("org_id"),
            Organization.status.in_([OrgStatus.active, OrgStatus.suspended]),
        )
    )
    assert set(read.parameters) == {"org_id"}
    assert sorted(read.constants.values()) == ["active", "suspended"]  # stored as the column stores them
    with pytest.raises(TypeError, match="org_id"):
        read.bind({"org": org.id})

    async def work(reader: Reader, pool):  # type: ignore[no-untyped-def]
        return await reader.all(read, org_id=uuid.UUID(org.id)), await reader.all(read, org_id=uuid.uuid4())

    found, missing = with_reader(database_url, work)
    assert found == [(f"Org {org.slug}", OrgStatus.active)]
    assert missing == []


def test_a_read_cancelled_mid_statement_leaves_no_broken_connection_behind(
    database_url: str, org: OrgWorld
) -> None:
    """A request whose client goes away cancels its read while Postgres is still running it; the
    connection goes back to the pool (which discards it: its statement is still active) and the
    next read, on a pool of one, gets a working connection and its own answer."""
    slow = Read(select(func.pg_sleep(bindparam("seconds")), literal("slow")))
    name = Read(select(Organization.name).where(Organization.id == bindparam("org_id")))

    async def work(reader: Reader, pool):  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(reader.first(slow, seconds=30))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.wait_for(reader.first(name, org_id=uuid.UUID(org.id)), 10)

    assert with_reader(database_url, work, max_size=1) == (f"Org {org.slug}",)


def test_rows_are_converted_only_where_a_column_needs_it(database_url: str, org: OrgWorld) -> None:
    plain = Read(select(Organization.id, Organization.name).where(Organization.id == bindparam("org_id")))
    mixed = Read(select(Organization.name, Organization.status).where(Organization.id == bindparam("org_id")))
    assert plain.converted == () and [i for i, _ in mixed.converted] == [1]
    assert mixed.rows([("a", "active"), ("b", "suspended")]) == [
        ("a", OrgStatus.active), ("b", OrgStatus.suspended),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="columns"):
        mixed.row(("a",))

    async def work(reader: Reader, pool):  # type: ignore[no-untyped-def]
        org_id = uuid.UUID(org.id)
        return await reader.all(plain, org_id=org_id), await reader.first(mixed, org_id=org_id)

    rows, first = with_reader(database_url, work)
    assert rows == [(uuid.UUID(org.id), f"Org {org.slug}")]
    assert first == (f"Org {org.slug}", OrgStatus.active) and isinstance(first[1], OrgStatus)


def test_member_reads_answer_the_member_through_the_reader(client: httpx.Client, org: OrgWorld) -> None:
    member = org.headers("member")
    me = client.get("/v1/me", headers=member)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user_id"] == org.user_ids["member"] and body["token_kind"] == "user"
    assert {m["organization_id"]: (m["role"], m["status"]) for m in body["memberships"]} == {
        org.id: ("member", "active")
    }
    read = client.get(f"/v1/orgs/{org.id}", headers=member)
    assert read.status_code == 200, read.text
    assert (read.json()["id"], read.json()["slug"], read.json()["role"]) == (org.id, org.slug, "member")
    # The members page, one at a time: every member once, in id order, then no cursor.
    seen, cursor = [], None
    while True:
        page = client.get(
            f"/v1/orgs/{org.id}/members",
            params={"limit": 2, **({"cursor": cursor} if cursor else {})},
            headers=member,
        )
        assert page.status_code == 200, page.text
        seen += [(m["user_id"], m["role"]) for m in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted((uid, role) for role, uid in org.user_ids.items())
    assert len(seen) == len(set(seen))


def test_the_readers_answers_are_the_session_routes_answers_to_the_byte(
    client: httpx.Client, org: OrgWorld
) -> None:
    """The reader fetches in binary (timestamps, uuids, JSON decoded by psycopg's binary loaders);
    the routes that answer through a session (ORM objects, text results) answer the same rows:
    the same JSON, timestamps to the microsecond and their offset included."""
    owner = org.headers("owner")
    invited = client.post(
        f"/v1/orgs/{org.id}/members",
        headers=owner,
        json={"email": f"bytes-{org.slug}@example.com", "role": "viewer"},
    )
    assert invited.status_code == 201, invited.text
    page = client.get(f"/v1/orgs/{org.id}/members", headers=org.headers("member"), params={"limit": 200})
    assert page.status_code == 200, page.text
    (item,) = [m for m in page.json()["items"] if m["user_id"] == invited.json()["user_id"]]
    assert item == invited.json()
    changed = client.patch(
        f"/v1/orgs/{org.id}", headers=owner, json={"traits": {"plan": "pro", "seats": [1, 2.5]}}
    )
    assert changed.status_code == 200, changed.text
    read = client.get(f"/v1/orgs/{org.id}", headers=owner)
    assert read.status_code == 200, read.text
    assert read.content == changed.content
    assert read.json()["traits"] == {"plan": "pro", "seats": [1, 2.5]}


def test_a_member_removed_behind_the_apis_back_loses_the_org_within_the_cache_bound(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld
) -> None:
    """The guard caches an active member's grant (as flag evaluation does): a removal through the
    API ends access at once; one made in the database (no process told) within ``cache.TTL``."""
    owner = org.headers("owner")

    def status(role: str) -> int:
        return client.get(f"/v1/orgs/{org.id}/members", headers=org.headers(role)).status_code

    assert [status(role) for role in ("member", "viewer")] == [200, 200]  # now cached
    removed = client.delete(f"/v1/orgs/{org.id}/members/{org.user_ids['member']}", headers=owner)
    assert removed.status_code == 204, removed.text
    assert status("member") == 404
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE memberships SET status = 'removed' WHERE organization_id = :o AND user_id = :u"),
            {"o": org.id, "u": org.user_ids["viewer"]},
        )
    eventually(lambda: status("viewer") == 404, what="a membership removed in the database ends",
               within=cache.TTL + REQUEST_SLACK)  # fmt: skip
    # A grant is one user's of one org: a member of another org never reaches this one.
    assert client.get(f"/v1/orgs/{org.id}", headers=other_org.headers("owner")).status_code == 404


def test_a_token_revoked_behind_the_apis_back_stops_working_within_the_cache_bound(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    """The verified-token cache (``cache.principals``) answers a known token without a lookup for
    ``cache.TTL`` seconds; a revocation no process was told of (psql) ends it within that bound,
    on every route the member reads."""
    member = org.headers("member")
    routes = ("/v1/me", f"/v1/orgs/{org.id}", f"/v1/orgs/{org.id}/members")
    assert [client.get(path, headers=member).status_code for path in routes] == [200, 200, 200]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE api_tokens SET revoked_at = now() WHERE secret_hash = :h"),
            {"h": digest(org.tokens["member"])},
        )

    def refused() -> bool:
        return [client.get(path, headers=member).status_code for path in routes] == [401, 401, 401]

    eventually(refused, what="a token revoked in the database is refused", within=cache.TTL + REQUEST_SLACK)
    assert "revoked" in client.get("/v1/me", headers=member).json()["detail"]


NAME = Read(select(Organization.name).where(Organization.id == bindparam("org_id")))
SLOW = Read(select(func.pg_sleep(bindparam("seconds")), literal("slow")))


async def _fd_is_free_for_the_next_socket(fd: int) -> None:
    """A socket given ``fd``'s number (as the next socket opened after a close gets it) is watched
    by the loop like any other: a registration left behind for a closed fd would keep libuv from
    ever polling the new one at that number, and this read would hang."""
    loop = asyncio.get_running_loop()
    here, there = socket.socketpair()
    if here.fileno() != fd:  # the kernel gave another number: put the socket at fd's
        os.dup2(here.fileno(), fd)
        here.close()
        here = socket.socket(fileno=fd)
    here.setblocking(False)
    try:
        there.send(b"x")
        assert await asyncio.wait_for(loop.sock_recv(here, 1), 5) == b"x"
    finally:
        here.close()
        there.close()


def _watched(fd: int) -> bool:
    """Whether an epoll set of this process (the loop's) watches ``fd``: the kernel's own account,
    ``/proc/self/fdinfo`` of each epoll descriptor (a line ``tfd: N`` per registered fd)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{name}") as info:
                if any(line.split()[:2] == ["tfd:", str(fd)] for line in info):
                    return True
        except OSError:  # closed meanwhile
            continue
    return False


def _backend(pool) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(socket fd, backend pid) of the one connection of a pool of one, taken out and put back."""

    async def get() -> tuple[int, int]:
        conn = await pool.getconn()
        try:
            return conn.pgconn.socket, conn.info.backend_pid
        finally:
            await pool.putconn(conn)

    return get()  # type: ignore[return-value]


def test_a_read_connection_keeps_its_socket_in_the_loop_and_drops_it_before_it_closes(
    database_url: str, org: OrgWorld
) -> None:
    """The read pool's connections stay registered with the (uv)loop between reads (what a read
    saves: psycopg's add and remove at every wait), and the registration goes before the socket
    does: the fd's number, handed to the next socket, is polled for that socket."""

    async def main() -> None:
        org_id = uuid.UUID(org.id)
        pool = make_read_pool(database_url, max_size=1)
        await pool.open()
        reader = Reader(pool)
        assert await reader.first(NAME, org_id=org_id) == (f"Org {org.slug}",)
        assert await reader.first(NAME, org_id=org_id) == (f"Org {org.slug}",)
        fd, _ = await _backend(pool)
        assert _watched(fd)  # still registered after its reads, though nothing reads it now
        await pool.close()
        await _fd_is_free_for_the_next_socket(fd)

    uvloop.run(main())


def test_a_read_connection_lost_mid_read_or_while_idle_leaves_nothing_registered(
    database_url: str, engine: Engine, org: OrgWorld
) -> None:
    """libpq closes the socket of a connection it finds lost, inside a step of the wait: the
    registration is dropped in that same step, so the number is free for the next socket at once.
    An idle connection the server closes becomes readable with nobody waiting: the callback drops
    its registration (the loop does not wake for it at every turn). Either way the read fails
    plainly, and the next read, on a new connection of the pool, answers."""

    def terminate(pid: int, after: float = 0.0) -> None:
        time.sleep(after)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

    async def main() -> None:
        org_id = uuid.UUID(org.id)
        pool = make_read_pool(database_url, max_size=1)
        await pool.open()
        reader = Reader(pool)
        try:
            # Mid-read: the backend goes away while it runs the statement.
            assert await reader.first(NAME, org_id=org_id) == (f"Org {org.slug}",)
            fd, pid = await _backend(pool)
            terminator = asyncio.ensure_future(asyncio.to_thread(terminate, pid, 0.3))
            with pytest.raises(psycopg.OperationalError):
                await reader.first(SLOW, seconds=30)
            # Nothing has run since the read failed (the pool reconnects in a task of its own).
            await _fd_is_free_for_the_next_socket(fd)
            await terminator
            assert await asyncio.wait_for(reader.first(NAME, org_id=org_id), 10) == (f"Org {org.slug}",)

            # Idle: the server closes a connection sitting in the pool, registered.
            fd, pid = await _backend(pool)
            assert _watched(fd)
            await asyncio.to_thread(terminate, pid)
            await asyncio.sleep(0.3)  # the loop sees the socket readable, with nobody waiting
            assert not _watched(fd)
            with pytest.raises(psycopg.OperationalError):
                await asyncio.wait_for(reader.first(NAME, org_id=org_id), 10)
            assert await asyncio.wait_for(reader.first(NAME, org_id=org_id), 10) == (f"Org {org.slug}",)
        finally:
            await pool.close()

    uvloop.run(main())


def test_a_read_is_prepared_once_per_connection_and_its_errors_are_psycopgs_own(
    database_url: str, org: OrgWorld
) -> None:
    """``ReadConnection.fetch`` prepares each read on the server at its first use on a connection
    and then only binds and executes it (``pg_prepared_statements``: one entry per read however
    many times it ran); a parameter whose type psycopg dumps differently (an int past int2) gets a
    statement of its own; a statement the server refuses raises psycopg's error for it and leaves
    the connection answering the next read."""
    page = Read(
        select(Organization.name)
        .where(Organization.id.in_([bindparam("org_id"), bindparam("other")]))
        .limit(bindparam("limit"))
    )
    divide = Read(select(literal(1) / bindparam("n", type_=Integer)))

    async def work(reader: Reader, pool):  # type: ignore[no-untyped-def]
        org_id = uuid.UUID(org.id)
        answers = [await reader.all(page, org_id=org_id, other=uuid.uuid4(), limit=n) for n in (1, 5, 50)]
        answers.append(await reader.all(page, org_id=uuid.uuid4(), other=org_id, limit=100_000))
        assert await reader.first(NAME, org_id=org_id) == (f"Org {org.slug}",)
        assert await reader.first(NAME, org_id=uuid.uuid4()) is None
        with pytest.raises(psycopg.errors.DivisionByZero):
            await reader.first(divide, n=0)
        assert await reader.first(divide, n=1) == (1,)
        conn = await pool.getconn()
        try:
            cursor = await conn.execute("SELECT statement FROM pg_prepared_statements ORDER BY prepare_time")
            prepared = [statement for (statement,) in await cursor.fetchall()]
        finally:
            await pool.putconn(conn)
        return answers, prepared

    answers, prepared = with_reader(database_url, work, max_size=1)
    assert answers == [[(f"Org {org.slug}",)]] * 4
    # The page twice (limits 1-50 dump as int2, 100,000 as int4), the name once, the division once
    # (prepared, then refused at execution): nothing prepared again per call.
    assert prepared.count(page.sql) == 2 and prepared.count(NAME.sql) == 1 and prepared.count(divide.sql) == 1
    assert len(prepared) == 4, prepared


def test_a_utc_server_gives_timestamps_a_fixed_utc_offset_and_other_zones_are_kept(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read connection whose zone is UTC under another name (``Etc/UTC``) is told ``UTC``:
    psycopg's loaders then use ``datetime.timezone.utc`` (cheap) instead of ``ZoneInfo``; the
    instant and its offset are the same, so the answer's JSON is too (``msgspec``: ``Z`` either
    way). A zone with another offset is left alone: its answers keep their offsets."""
    moment = Read(select(func.to_timestamp(bindparam("epoch", type_=Integer))))

    def read_in(zone: str) -> tuple[datetime.datetime, bytes | None]:
        monkeypatch.setenv("PGTZ", zone)  # libpq sends it at connect: the session's zone

        async def work(reader: Reader, pool):  # type: ignore[no-untyped-def]
            (when,) = await reader.first(moment, epoch=1_700_000_000)
            conn = await pool.getconn()
            try:
                return when, conn.pgconn.parameter_status(b"TimeZone")
            finally:
                await pool.putconn(conn)

        return with_reader(database_url, work)

    utc, zone = read_in("Etc/UTC")
    assert zone == b"UTC" and utc.tzinfo is datetime.UTC
    berlin, zone = read_in("Europe/Berlin")
    assert zone == b"Europe/Berlin" and berlin.utcoffset() == datetime.timedelta(hours=1)
    assert utc == berlin == datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)
    assert msgspec.json.encode(utc) == b'"2023-11-14T22:13:20Z"'
    assert msgspec.json.encode(berlin) == b'"2023-11-14T23:13:20+01:00"'


def test_the_members_page_is_one_index_range_in_a_plan_made_once(database_url: str, org: OrgWorld) -> None:
    """The members page (first and later pages) finds the organization's members through
    ``ix_memberships_organization_id_id`` (organization, then the page's id order), in a plan that
    does not depend on the organization, and Postgres keeps that plan for the connection instead of
    planning every read again (``pg_prepared_statements``: generic plans after the first five
    custom ones). With many organizations the plan is that index's range in order, no sort
    (migration 0096's docstring)."""
    org_id = uuid.UUID(org.id)

    async def work(reader: Reader, pool):  # type: ignore[no-untyped-def]
        first = [await reader.all(READ_MEMBERS, org_id=org_id, limit=3) for _ in range(8)]
        after = [
            await reader.all(READ_MEMBERS_AFTER, org_id=org_id, after=first[0][-1][0], limit=3)
            for _ in range(8)
        ]
        conn = await pool.getconn()
        try:
            plans = {}
            for read in (READ_MEMBERS, READ_MEMBERS_AFTER):
                cursor = await conn.execute("EXPLAIN (GENERIC_PLAN, COSTS OFF) " + read.sql)
                plans[read.sql] = "\n".join(line for (line,) in await cursor.fetchall())
            cursor = await conn.execute("SELECT statement, generic_plans FROM pg_prepared_statements")
            generic = dict(await cursor.fetchall())
        finally:
            await pool.putconn(conn)
        return first, after, plans, generic

    first, after, plans, generic = with_reader(database_url, work, max_size=1)
    ids = sorted(row[0] for row in first[0])
    assert [row[0] for row in first[0]] == ids and all(page == first[0] for page in first)
    assert all(row[0] > ids[-1] for row in after[0]) and all(page == after[0] for page in after)
    for sql, plan in plans.items():
        assert "ix_memberships_organization_id_id" in plan, plan
        assert generic[sql] > 0, generic
