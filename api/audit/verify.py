"""``verify``: walk a chain from its start (or its newest checkpoint) to its recorded head.

Every entry must follow the one before it (seq + 1), carry its hash as ``prev_hash``, and hash to
its own ``hash``; the walk must end exactly at the head the database recorded. The first entry
that does not is named, with the reason. Memory stays flat: rows stream in chunks, read and
hashed in a worker thread on a second connection that shares the walk's snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.audit.chain import GENESIS, canonical_values, entry_hash
from api.audit.rows import (
    SELECT_FOR_WALK,
    WALK_HASH,
    WALK_PREV_HASH,
    WALK_SEQ,
    SnapshotReader,
    snapshot,
    walk_entry,
    walk_values,
)
from api.db.engine import libpq_url

_WALK_ID = 0  # (``id`` is the first of the hashed fields, SELECT_FOR_WALK's order)


@dataclass(frozen=True, slots=True)
class Broken:
    chain_key: str
    id: uuid.UUID | None
    seq: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Point:
    seq: int
    hash: str
    entry_id: uuid.UUID | str | None = None


@dataclass
class ChainReport:
    chain_key: str
    entries_checked: int = 0
    broken: Broken | None = None
    head: Point | None = None
    checkpoint: Point | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.chains)

    @property
    def entries_checked(self) -> int:
        return sum(c.entries_checked for c in self.chains)

    @property
    def first_broken(self) -> Broken | None:
        return next((c.broken for c in self.chains if c.broken is not None), None)

    def as_dict(self) -> dict[str, Any]:
        broken = self.first_broken
        return {
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "chains_checked": len(self.chains),
            "first_broken": None
            if broken is None
            else {
                "chain_key": broken.chain_key,
                "id": str(broken.id) if broken.id else None,
                "seq": broken.seq,
                "reason": broken.reason,
            },
            "broken_chains": [c.chain_key for c in self.chains if not c.ok],
        }


class ChainWalk:
    """The checks, fed one chain's rows in seq order; pure, so tests and the CLI share them."""

    def __init__(self, chain_key: str, *, head: Point | None, checkpoints: dict[int, Point]) -> None:
        self.report = ChainReport(
            chain_key=chain_key,
            head=head,
            checkpoint=checkpoints[max(checkpoints)] if checkpoints else None,
        )
        self.checkpoints = checkpoints
        self.last: Point | None = None  # the newest link accepted so far

    def _break(self, entry: dict[str, Any] | None, reason: str, *, point: Point | None = None) -> None:
        if entry is not None:
            self.report.broken = Broken(self.report.chain_key, uuid.UUID(entry["id"]), entry["seq"], reason)
        else:
            assert point is not None
            entry_id = uuid.UUID(str(point.entry_id)) if point.entry_id is not None else None
            self.report.broken = Broken(self.report.chain_key, entry_id, point.seq, reason)

    def feed(self, entry: dict[str, Any]) -> bool:
        """Check one entry; False once the chain is broken (the walk can stop)."""
        if self.report.broken is not None:
            return False
        self.report.entries_checked += 1
        seq = entry["seq"]
        head = self.report.head
        if self.last is None:
            if seq == 1:
                self.last = Point(0, GENESIS)
            elif seq - 1 in self.checkpoints:
                self.last = self.checkpoints[seq - 1]
            else:
                self._break(
                    entry, f"entries 1..{seq - 1} are missing and no checkpoint records their removal"
                )
                return False
        if seq != self.last.seq + 1:
            self._break(entry, f"entries {self.last.seq + 1}..{seq - 1} are missing before this one")
        elif head is None:
            self._break(entry, "the chain has no recorded head: its entries were not appended by Keel")
        elif seq > head.seq:
            self._break(entry, "this entry is past the chain's recorded head: it was not appended by Keel")
        elif entry["prev_hash"] != self.last.hash:
            self._break(
                entry, f"prev_hash does not match the hash of entry {self.last.seq}: the chain was cut here"
            )
        elif entry_hash(entry, entry["prev_hash"]) != entry["hash"]:
            self._break(entry, "the entry's content does not match its hash: it was changed")
        else:
            self.last = Point(seq, entry["hash"], entry["id"])
            return True
        return False

    def feed_rows(self, rows: Sequence[Sequence[Any]]) -> bool:
        """:meth:`feed` over ``SELECT_FOR_WALK`` rows, the common case without building a mapping:
        a row that follows the last accepted one (seq + 1, up to the head, its ``prev_hash``) and
        hashes to its ``hash`` is accepted here; any other row goes through :meth:`feed`, which
        names what is wrong. False once the chain is broken."""
        head = self.report.head
        sha256 = hashlib.sha256
        at = 0
        while at < len(rows):
            last = self.last
            if last is None or head is None or self.report.broken is not None:
                if not self.feed(walk_entry(rows[at])):
                    return False
                at += 1
                continue
            last_seq, last_hash, last_row, limit, checked = last.seq, last.hash, None, head.seq, 0
            for row in rows[at:] if at else rows:
                seq, prev_hash, digest = row[WALK_SEQ], row[WALK_PREV_HASH], row[WALK_HASH]
                if (
                    seq != last_seq + 1
                    or seq > limit
                    or prev_hash != last_hash
                    or sha256(canonical_values(walk_values(row)) + prev_hash.encode()).hexdigest() != digest
                ):
                    break
                last_seq, last_hash, last_row = seq, digest, row
                checked += 1
            if last_row is not None:
                self.last = Point(last_seq, last_hash, last_row[_WALK_ID])
                self.report.entries_checked += checked
            at += checked
            if at < len(rows):  # a row the checks above did not accept: feed() says why
                if not self.feed(walk_entry(rows[at])):
                    return False
                at += 1
        return True

    def finish(self) -> ChainReport:
        """After the last row: the walk must have ended at the recorded head."""
        report, head = self.report, self.report.head
        if report.broken is not None:
            return report
        end = self.last or report.checkpoint or Point(0, GENESIS)
        if head is None:
            if end.seq:
                self._break(None, "the chain has no recorded head", point=end)
        elif end.seq < head.seq:
            self._break(
                None,
                f"entries {end.seq + 1}..{head.seq} are missing: the chain stops before its recorded head",
                point=head,
            )
        elif end.hash != head.hash:
            self._break(None, "the last entry's hash differs from the chain's recorded head", point=end)
        return report


async def chain_state(conn: AsyncConnection, chain_key: str) -> tuple[Point | None, dict[int, Point]]:
    head_row = (
        await conn.execute(
            text("SELECT seq, hash, entry_id FROM audit_chain_heads WHERE chain_key = :k"), {"k": chain_key}
        )
    ).one_or_none()
    head = Point(head_row[0], head_row[1], head_row[2]) if head_row else None
    checkpoints = {
        seq: Point(seq, digest, entry_id)
        for seq, digest, entry_id in (
            await conn.execute(
                text("SELECT seq, hash, entry_id FROM audit_checkpoints WHERE chain_key = :k"),
                {"k": chain_key},
            )
        ).all()
    }
    return head, checkpoints


async def verify_chain(
    conn: AsyncConnection,
    reader: SnapshotReader,
    chain_key: str,
    *,
    progress: Callable[[int], None] | None = None,
) -> ChainReport:
    """One chain: its head and checkpoints read on ``conn``, its rows read and hashed in a worker
    thread through ``reader`` (the same snapshot), so the event loop keeps serving meanwhile."""
    head, checkpoints = await chain_state(conn, chain_key)
    walk = ChainWalk(chain_key, head=head, checkpoints=checkpoints)
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def advanced(count: int) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, count)

    def run() -> None:
        chunks = reader.chunks(SELECT_FOR_WALK, "chain_key = %(chain_key)s", {"chain_key": chain_key})
        with contextlib.closing(chunks):
            for chunk in chunks:
                going = walk.feed_rows(chunk)
                advanced(len(chunk))
                if not going or stop.is_set():
                    break

    await _in_thread(run, stop)
    return walk.finish()


async def _in_thread(run: Callable[[], None], stop: threading.Event) -> None:
    """``run`` in a worker thread; if the caller is cancelled, ``run`` is told to stop (at its next
    chunk) and waited for, so that nothing uses the reader's connection once it is closed."""
    done = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([done])
        if not done.cancelled():
            done.exception()  # (retrieved: the cancellation is what the caller hears of)
        raise


@contextlib.asynccontextmanager
async def walk_reader(engine: AsyncEngine, conn: AsyncConnection) -> AsyncIterator[SnapshotReader]:
    """A :class:`SnapshotReader` in ``conn``'s snapshot (``conn`` in a REPEATABLE READ transaction)."""
    snapshot_id = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
    url = libpq_url(engine.url.render_as_string(hide_password=False))
    reader = await asyncio.to_thread(SnapshotReader, url, snapshot_id)
    try:
        yield reader
    finally:
        await asyncio.to_thread(reader.close)


async def chain_keys(conn: AsyncConnection) -> list[str]:
    """Every chain: those with a head, and any with entries but no head (which cannot verify)."""
    rows = await conn.execute(
        text(
            "SELECT chain_key FROM audit_chain_heads"
            " UNION SELECT DISTINCT chain_key FROM audit_log ORDER BY chain_key"
        )
    )
    return [r[0] for r in rows]


async def expected_entries(conn: AsyncConnection, keys: list[str] | None = None) -> int:
    """How many entries a walk will read (for a progress bar): head minus checkpoint, per chain."""
    query = (
        "SELECT COALESCE(sum(h.seq - COALESCE((SELECT max(c.seq) FROM audit_checkpoints c"
        " WHERE c.chain_key = h.chain_key), 0)), 0) FROM audit_chain_heads h"
    )
    if keys is not None:
        query += " WHERE h.chain_key = ANY(:keys)"
    return int((await conn.execute(text(query), {"keys": keys} if keys is not None else {})).scalar_one())


async def verify(
    engine: AsyncEngine,
    *,
    chain_key: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify one chain, or every chain, in one consistent snapshot."""
    report = VerifyReport()
    async with snapshot(engine) as conn:
        keys = [chain_key] if chain_key is not None else await chain_keys(conn)
        if on_total is not None:
            on_total(await expected_entries(conn, keys if chain_key is not None else None))
        async with walk_reader(engine, conn) as reader:
            for key in keys:
                report.chains.append(await verify_chain(conn, reader, key, progress=progress))
    return report
