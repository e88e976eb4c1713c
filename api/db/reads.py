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
- prepared on the server once per connection (:meth:`ReadConnection.fetch`): no parse or plan per
  request; the statement is sent straight through libpq (``send_query_prepared``), its parameters
  dumped and its rows loaded by psycopg's own C adapters, without a cursor: a psycopg cursor's
  machinery (its lock, query conversion, prepare bookkeeping, result selection) cost ~30 us of
  CPU a read, about what the round trip itself costs (``bench/bench_request_path.py``);
- results in binary: psycopg's C loaders of binary timestamps and uuids do less than parsing
  their text (a members page of 21: ~10 us of CPU a read); the values are the same objects
  (timestamps aware, in the connection's time zone), so answers encode to the same JSON;
- a server whose time zone is UTC by another name (``Etc/UTC``, what initdb usually picks) is
  told ``UTC`` on each read connection (:func:`utc_by_its_name`): psycopg then makes timestamps
  with ``datetime.timezone.utc`` rather than ``ZoneInfo("Etc/UTC")``, whose conversion was half
  the cost of loading a members page; the same instants at the same offset, the same JSON;
- waited for with the socket kept in the event loop (:class:`ReadConnection`), not added to it and
  removed again at every wait as psycopg's own wait does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection, errors, pq
from psycopg.abc import PQGen
from psycopg.abc import Transformer as AdaptTransformer
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import execute
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

#: psycopg's dialect, with ``$1``-style placeholders: the SQL libpq prepares as it is.
_DIALECT = psycopg_dialect.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
_BINARY = pq.Format.BINARY
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_COMMAND_OK = pq.ExecStatus.COMMAND_OK

Processor = Callable[[Any], Any] | None


class Read:
    """A Core ``SELECT`` compiled once: its SQL (``$n`` placeholders), its constants (as the column
    types store them), the processors of the parameters named by :func:`sqlalchemy.bindparam` and
    of the result columns.
    """

    __slots__ = (
        "constants", "converted", "formats", "parameters", "results", "slots", "sql", "sql_bytes",
        "template",
    )  # fmt: skip

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        # The parameters are the binds with no value (``bindparam("org_id")``); the rest are the
        # statement's constants, stored as their columns' types store them. Constant IN lists are
        # expanded to one placeholder per value.
        compiled = statement.compile(dialect=_DIALECT)
        names = [name for name, bind in compiled.binds.items() if bind.required]
        expanded = compiled.construct_expanded_state(dict.fromkeys(names))
        processors: Mapping[str, Processor] = expanded.processors or {}
        self.sql: str = expanded.statement
        self.sql_bytes: bytes = self.sql.encode()
        self.parameters: dict[str, Processor] = {name: processors.get(name) for name in names}
        self.constants: dict[str, Any] = {}
        for name, value in expanded.parameters.items():
            if name not in self.parameters:
                process = processors.get(name)
                self.constants[name] = process(value) if process else value
        order = expanded.positiontup or []
        #: The values in placeholder order, the constants in place (the parameters' slots: None).
        self.template: tuple[Any, ...] = tuple(self.constants.get(name) for name in order)
        #: Where each parameter goes, and its processor.
        self.slots: dict[str, tuple[tuple[int, ...], Processor]] = {
            name: (tuple(i for i, n in enumerate(order) if n == name), process)
            for name, process in self.parameters.items()
        }
        #: psycopg chooses each value's format (binary for uuids and numbers, text for strings).
        self.formats: list[PyFormat] = [PyFormat.AUTO] * len(order)
        self.results: tuple[Processor, ...] = tuple(
            _result_processor(column.type) for column in statement.selected_columns
        )
        #: The result columns that need converting (enums stored as text, mostly): psycopg's own
        #: values stand for the rest, so a row with none to convert is returned as psycopg made it.
        self.converted: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (i, p) for i, p in enumerate(self.results) if p is not None
        )

    def bind(self, values: Mapping[str, Any]) -> list[Any]:
        """The statement's values in placeholder order: ``values`` (exactly its parameters,
        processed as their types do) and its constants."""
        if values.keys() != self.parameters.keys():
            raise TypeError(f"this read takes {sorted(self.parameters)}, not {sorted(values)}")
        bound = list(self.template)
        slots = self.slots
        for name, value in values.items():
            places, process = slots[name]
            if process is not None:
                value = process(value)
            for i in places:
                bound[i] = value
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
    #: Made at the first :meth:`fetch`: this connection's adapters, and the name of each statement
    #: it has prepared, by read and parameter types.
    _keel_transformer: AdaptTransformer | None = None
    _keel_statements: dict[tuple[Read, tuple[int, ...]], bytes]

    async def fetch(self, read: Read, params: list[Any], *, limit: int | None = None) -> list[Any]:
        """The rows (at most ``limit``) of ``read`` with ``params`` (:meth:`Read.bind`'s), as
        psycopg's binary loaders make them: prepared on the server at its first use here, then one
        ``Bind``/``Execute`` a call, in a single write (libpq's ``PQsendQueryPrepared``).

        Without a cursor: the connection is this caller's alone (taken from the pool), in
        autocommit, and nothing here changes its state but the statements it prepares. Errors are
        psycopg's own (``errors.error_from_result``; a lost connection: ``OperationalError``)."""
        tx = self._keel_transformer
        if tx is None:
            tx = self._keel_transformer = Transformer(self)
            self._keel_statements = {}
        dumped = tx.dump_sequence(params, read.formats)
        types, formats = tx.types or (), tx.formats  # what this dump chose (an int's size, mostly)
        pgconn = self.pgconn
        name = self._keel_statements.get((read, types))
        if name is None:
            name = b"keel_%d" % len(self._keel_statements)
            pgconn.send_prepare(name, read.sql_bytes, param_types=types)
            self._check(await self.wait(execute(pgconn)), _COMMAND_OK)
            self._keel_statements[read, types] = name
        pgconn.send_query_prepared(name, dumped, param_formats=formats, result_format=_BINARY)
        result = self._check(await self.wait(execute(pgconn)), _TUPLES_OK)
        tx.set_pgresult(result, format=_BINARY)
        count = result.ntuples if limit is None else min(limit, result.ntuples)
        return tx.load_rows(0, count, tuple)

    def _check(self, results: list[pq.abc.PGresult], expected: pq.ExecStatus) -> pq.abc.PGresult:
        for result in results:
            status = pq.ExecStatus(result.status)
            if status != expected:
                if status == pq.ExecStatus.FATAL_ERROR:
                    raise errors.error_from_result(result, encoding=self.info.encoding)
                raise errors.InternalError(f"a read got {status.name}, not {expected.name}")
        if len(results) != 1:
            raise errors.InternalError(f"a read got {len(results)} results, not one")
        return results[0]

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


#: Postgres's names of time zones that are UTC at every instant (offset 0, no transitions).
UTC_ALIASES = frozenset(
    name.casefold()
    for name in (
        "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu", "GMT",
        "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0", "Etc/GMT+0", "GMT-0", "Etc/GMT-0", "Greenwich",
        "Etc/Greenwich",
    )
)  # fmt: skip


async def utc_by_its_name(conn: AsyncConnection[Any]) -> None:
    """A new read connection whose time zone is UTC under another name is set to ``UTC`` itself
    (psycopg's one name for ``datetime.timezone.utc``, a fixed offset its C loaders apply at no
    cost); any other zone is left as the server has it, so answers keep its offsets."""
    zone = conn.pgconn.parameter_status(b"TimeZone")
    if zone is not None and zone != b"UTC" and zone.decode().casefold() in UTC_ALIASES:
        await conn.execute("SET TimeZone TO 'UTC'")


def make_read_pool(url: str, *, max_size: int = 10) -> AsyncConnectionPool[ReadConnection]:
    """Read-only autocommit connections (not opened: the app's lifespan opens and closes it)."""
    return AsyncConnectionPool(
        libpq_url(url),
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True, "options": READ_ONLY_OPTIONS},
        connection_class=ReadConnection,
        configure=utc_by_its_name,
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
        return read.rows(await self._run(read, values, None))

    async def first(self, read: Read, **values: Any) -> tuple[Any, ...] | None:
        raw = await self._run(read, values, 1)
        return read.row(raw[0]) if raw else None

    async def _run(self, read: Read, values: dict[str, Any], limit: int | None) -> list[Any]:
        for observe in self.observers:
            observe(read.sql)
        params = read.bind(values)
        # getconn/putconn rather than ``pool.connection()``: that one also enters the connection's
        # own context, which commits (a lock and a status check) what autocommit never opened.
        # putconn still discards a connection a failed or cancelled read left in a bad state.
        conn = await self.pool.getconn()
        try:
            return await conn.fetch(read, params, limit=limit)
        finally:
            await self.pool.putconn(conn)
