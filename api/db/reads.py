"""Reads outside any transaction: one statement, one round trip, on read-only connections.

The request path's reads (who a member is, an organization, a page of members, the org guard)
cost little in Postgres; what they paid for was the client side: a session, ORM objects, and
round trips for ``BEGIN`` and ``COMMIT`` around a single ``SELECT`` (each round trip a socket
write and a wake-up on both sides, the largest cost in a profile of the server). A :class:`Read`
is a SQLAlchemy Core ``SELECT`` (the same columns, clauses and rules as everywhere else) compiled
once for psycopg; :class:`Reader` runs it on a connection of its own pool:

- autocommit (the statement is its own transaction: no ``BEGIN``/``COMMIT``), so a read sees one
  snapshot per statement: a route that must see several tables at one instant reads them in one
  statement, or uses the request's session;
- ``default_transaction_read_only``: Postgres refuses any write sent on these connections, so a
  route cannot write outside a transaction by mistake (and the app role's privileges are unchanged);
- prepared on the server at first use (psycopg's ``prepare=True``): no parse or plan per request;
- results in binary: psycopg's C loaders of binary timestamps and uuids do less than parsing
  their text (a members page of 21: ~10 us of CPU a read); the values are the same objects
  (timestamps aware, in the connection's time zone), so answers encode to the same JSON;
- waited for with the socket kept in the event loop (:class:`ReadConnection`), not added to it and
  removed again at every wait as psycopg's own wait does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection, AsyncCursor, pq
from psycopg.abc import PQGen
from psycopg.rows import TupleRow
from psycopg.waiting import Ready, Wait
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Enum, Select
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.types import TypeEngine

from api.db.engine import libpq_url

R = TypeVar("R")
#: What every read connection runs with (a server-side setting: writes are refused, not just unsent).
READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]

Processor = Callable[[Any], Any] | None


class Read:
    """A Core ``SELECT`` compiled once: its SQL, its constants (as the column types store them),
    the processors of the parameters named by :func:`sqlalchemy.bindparam` and of the result columns.
    """

    __slots__ = ("constants", "converted", "parameters", "results", "sql")

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        # The parameters are the binds with no value (``bindparam("org_id")``); the rest are the
        # statement's constants, stored as their columns' types store them. Constant IN lists are
        # expanded to one placeholder per value.
        compiled = statement.compile(dialect=_DIALECT)
        names = [name for name, bind in compiled.binds.items() if bind.required]
        expanded = compiled.construct_expanded_state(dict.fromkeys(names))
        processors: Mapping[str, Processor] = expanded.processors or {}
        self.sql: str = expanded.statement
        self.parameters: dict[str, Processor] = {name: processors.get(name) for name in names}
        self.constants: dict[str, Any] = {}
        for name, value in expanded.parameters.items():
            if name not in self.parameters:
                process = processors.get(name)
                self.constants[name] = process(value) if process else value
        self.results: tuple[Processor, ...] = tuple(
            _result_processor(column.type) for column in statement.selected_columns
        )
        #: The result columns that need converting (enums stored as text, mostly): psycopg's own
        #: values stand for the rest, so a row with none to convert is returned as psycopg made it.
        self.converted: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (i, p) for i, p in enumerate(self.results) if p is not None
        )

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        if values.keys() != self.parameters.keys():
            raise TypeError(f"this read takes {sorted(self.parameters)}, not {sorted(values)}")
        bound = dict(self.constants)
        for name, value in values.items():
            process = self.parameters[name]
            bound[name] = process(value) if process else value
        return bound

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if len(raw) != len(self.results):
            raise ValueError(f"a row of {len(raw)} columns for a read of {len(self.results)}")
        if not self.converted:
            return tuple(raw)
        values = list(raw)
        for i, process in self.converted:
            values[i] = process(values[i])
        return tuple(values)

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """:meth:`row` for each of ``raw``, the conversions looked up once for them all."""
        if not raw:
            return []
        if len(raw[0]) != len(self.results):
            raise ValueError(f"rows of {len(raw[0])} columns for a read of {len(self.results)}")
        if not self.converted:
            return [tuple(r) for r in raw]
        out = []
        converted = self.converted
        for r in raw:
            values = list(r)
            for i, process in converted:
                values[i] = process(values[i])
            out.append(tuple(values))
        return out


class ReadConnection(AsyncConnection[TupleRow]):
    """A connection whose socket stays registered with the event loop between reads.

    psycopg's own wait adds the socket to the loop and removes it at every wait, with a timer
    beside it: under uvloop each read paid ~6 ``epoll_ctl``, an ``ioctl`` and a timer (libuv checks
    a new poll handle, sets ``O_NONBLOCK``, adds and drops it: ~20 us of CPU a read on this machine,
    see ``bench/bench_request_path.py``). Here the socket is registered at the first wait for
    reading and stays so; a wait is a future that the reader callback resolves.

    What keeps it safe:

    - fd reuse: a registration names a file descriptor, and a closed one's number is handed to the
      next socket opened. So the registration is dropped before this connection's socket can
      close: in :meth:`close`, and after every step of a wait in which libpq itself may have
      dropped a connection it found lost (then its status is ``BAD``), before the loop runs again;
    - a readable socket nobody waits for (a notice, the server closing an idle connection) would
      wake the loop at every turn: the callback then drops the registration, and the next wait
      registers it again;
    - anything but a plain wait for reading (a wait to write, a timeout, another event loop) and
      an interruption (cancellation) go back to psycopg's own wait, the registration dropped first;
      a read cancelled mid-statement leaves the connection ``ACTIVE``, which the pool discards.
    """

    _kept: asyncio.AbstractEventLoop | None = None
    _kept_fd = -1
    _waiter: asyncio.Future[None] | None = None

    def _readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._drop()  # nobody waits: don't let the loop wake for it at every turn
        elif not waiter.done():
            waiter.set_result(None)

    def _drop(self) -> None:
        loop, self._kept = self._kept, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._kept_fd)
        self._kept_fd = -1

    async def wait(self, gen: PQGen[R], interval: float = 0.1, timeout: float | None = None) -> R:  # noqa: ASYNC109
        if timeout is not None:
            self._drop()
            return await super().wait(gen, interval, timeout)
        try:
            state = next(gen)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        try:
            while state == Wait.R:
                fd = self.pgconn.socket
                if self._kept is not loop or self._kept_fd != fd:
                    self._drop()
                    loop.add_reader(fd, self._readable)
                    self._kept, self._kept_fd = loop, fd
                waiter = self._waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
                state = gen.send(Ready.R)
                if self.pgconn.status == pq.ConnStatus.BAD:
                    self._drop()  # libpq closed the socket of a lost connection: not registered now
        except StopIteration as done:
            if self.pgconn.status == pq.ConnStatus.BAD:
                self._drop()
            return done.value  # type: ignore[no-any-return]
        except BaseException:
            self._drop()
            raise
        self._drop()  # a wait to write (a large statement): psycopg's wait for the rest
        return await super().wait(_resumed(gen, state), interval, timeout)

    async def close(self) -> None:
        self._drop()
        await super().close()


def _result_processor(column_type: TypeEngine[Any]) -> Processor:
    """The column type's own result processor; for an enum stored as text, a lookup in the table
    of that processor's answers for each stored string (one dict lookup a value, not a Python call
    and a ``try`` each: 44 of them in a members page of 22)."""
    process: Processor = column_type.result_processor(_DIALECT, None)
    if process is None or not isinstance(column_type, Enum) or column_type.native_enum:
        return process
    table: dict[Any, Any] = {stored: process(stored) for stored in column_type.enums}
    table[None] = None
    return table.__getitem__  # an unknown string: KeyError, a LookupError as SQLAlchemy's own


def _resumed(gen: PQGen[R], state: Wait) -> Generator[Wait, Ready | int, R]:
    """``gen``, whose ``next`` already returned ``state``: yields it again, then goes on."""
    ready = yield state
    while True:
        try:
            state = gen.send(ready)
        except StopIteration as done:
            result: R = done.value
            return result
        ready = yield state


def make_read_pool(url: str, *, max_size: int = 10) -> AsyncConnectionPool[ReadConnection]:
    """Read-only autocommit connections (not opened: the app's lifespan opens and closes it)."""
    return AsyncConnectionPool(
        libpq_url(url),
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True, "options": READ_ONLY_OPTIONS},
        connection_class=ReadConnection,
        open=False,
        name="keel-reads",
    )


class Reader:
    """Runs :class:`Read` statements on the read pool."""

    def __init__(self, pool: AsyncConnectionPool[ReadConnection]) -> None:
        self.pool = pool
        #: Called with each statement's SQL before it is sent (tests count what a request reads).
        self.observers: list[Callable[[str], None]] = []

    async def all(self, read: Read, **values: Any) -> list[tuple[Any, ...]]:
        return read.rows(await self._run(read, values, AsyncCursor.fetchall))

    async def first(self, read: Read, **values: Any) -> tuple[Any, ...] | None:
        raw = await self._run(read, values, AsyncCursor.fetchone)
        return None if raw is None else read.row(raw)

    async def _run(
        self, read: Read, values: dict[str, Any], fetch: Callable[[AsyncCursor[TupleRow]], Awaitable[R]]
    ) -> R:
        for observe in self.observers:
            observe(read.sql)
        params = read.bind(values)
        # getconn/putconn rather than ``pool.connection()``: that one also enters the connection's
        # own context, which commits (a lock and a status check) what autocommit never opened.
        # putconn still discards a connection a failed or cancelled read left in a bad state.
        conn = await self.pool.getconn()
        try:
            return await fetch(await conn.execute(read.sql, params, prepare=True, binary=True))
        finally:
            await self.pool.putconn(conn)
