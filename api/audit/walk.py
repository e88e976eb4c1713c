"""The checks ``verify`` runs over a chain's rows, pure (no database): one definition, which
the API's walk, the CLI's, the offline tests and the processes checking ranges of a big chain
(:func:`walk_range`, :func:`main`) share.

This module imports only what a child process needs (psycopg through ``api.audit.rows``, the
hash), so a process started to check a range (``python -m api.audit.walk``: :func:`main`) does
not load the app.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from api.audit.chain import GENESIS, canonical_values, entry_hash
from api.audit.rows import (
    SELECT_FOR_WALK,
    WALK_HASH,
    WALK_PREV_HASH,
    WALK_SEQ,
    SnapshotReader,
    walk_entry,
    walk_values,
)

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

    def _follows(self, entry: dict[str, Any]) -> bool:
        """Whether ``entry`` (its ``seq``, ``prev_hash`` and ``id``) may follow the last link
        accepted: the next seq (from genesis, or from the checkpoint that records a pruned prefix),
        within the recorded head, its ``prev_hash`` that link's hash. If not, the chain breaks here."""
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
        else:
            return True
        return False

    def feed(self, entry: dict[str, Any]) -> bool:
        """Check one entry; False once the chain is broken (the walk can stop)."""
        if self.report.broken is not None:
            return False
        self.report.entries_checked += 1
        if not self._follows(entry):
            return False
        if entry_hash(entry, entry["prev_hash"]) != entry["hash"]:
            self._break(entry, "the entry's content does not match its hash: it was changed")
            return False
        self.last = Point(entry["seq"], entry["hash"], entry["id"])
        return True

    def feed_run(self, first: dict[str, Any], count: int, last: Point) -> bool:
        """Accept a run of ``count`` consecutive rows checked already, apart, by a walk of their
        own (:func:`walk_range`: each row hashes right and follows the one before it, within the
        head): ``first`` (the run's first row: its ``seq``, ``prev_hash``, ``id``) must follow the
        last link accepted here, by :meth:`feed`'s rules and reasons; then ``last`` (the run's
        last link) is. False if the chain breaks at ``first``."""
        if self.report.broken is not None:
            return False
        self.report.entries_checked += 1
        if not self._follows(first):
            return False
        self.report.entries_checked += count - 1
        self.last = last
        return True

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


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What a walk of one range of a chain's seqs found (:func:`walk_range`), for :func:`link_ranges`:
    ``checked`` rows accepted, the first of them (``first``: its ``seq``, ``prev_hash``, ``id``)
    and the last (``last``), and the raw row it could not accept (``failed``), if any."""

    checked: int = 0
    first: dict[str, Any] | None = None
    last: Point | None = None
    failed: tuple[Any, ...] | None = None

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values (a row's are text, numbers and nulls: ``SELECT_FOR_WALK``'s casts)."""
        last = self.last
        return {
            "checked": self.checked,
            "first": self.first,
            "last": None if last is None else [last.seq, last.hash, last.entry_id],
            "failed": self.failed,
        }

    @classmethod
    def of_json(cls, value: dict[str, Any]) -> RangeResult:
        last, failed = value["last"], value["failed"]
        return cls(
            value["checked"],
            value["first"],
            None if last is None else Point(*last),
            None if failed is None else tuple(failed),
        )


def walk_range(
    chain_key: str, head: Point, chunks: Iterable[Sequence[Sequence[Any]]], *, advanced: Any = None
) -> RangeResult:
    """Walk one range of a chain's rows (``SELECT_FOR_WALK`` rows in seq order, in chunks) on its
    own: a :class:`ChainWalk` whose last link is taken from the range's first row (its seq - 1 and
    its ``prev_hash``), so that row is checked for its hash only and every later row by all of
    :meth:`ChainWalk.feed_rows`'s rules. Whether the first row follows the range before is for
    :func:`link_ranges`. ``advanced(n)`` is called after each chunk; a true return stops the walk
    (the result is then not to be linked)."""
    walk = ChainWalk(chain_key, head=head, checkpoints={})
    first: dict[str, Any] | None = None
    for chunk in chunks:
        if not chunk:
            continue
        if first is None:
            row = chunk[0]
            first = {"seq": row[WALK_SEQ], "prev_hash": row[WALK_PREV_HASH], "id": row[_WALK_ID]}
            walk.last = Point(first["seq"] - 1, first["prev_hash"])
        before = walk.report.entries_checked
        if not walk.feed_rows(chunk):  # (the row it broke at is counted, the last of the chunk's)
            failed = tuple(chunk[walk.report.entries_checked - before - 1])
            checked = walk.report.entries_checked - 1
            return RangeResult(checked, first if checked else None, walk.last if checked else None, failed)
        if advanced is not None and advanced(len(chunk)):
            break
    checked = walk.report.entries_checked
    return RangeResult(checked, first if checked else None, walk.last if checked else None)


def link_ranges(walk: ChainWalk, results: Iterable[RangeResult]) -> bool:
    """Link the walks of consecutive ranges (:func:`walk_range`, in seq order) into ``walk``:
    each run through :meth:`ChainWalk.feed_run`, a row a range could not accept through
    :meth:`ChainWalk.feed` (after the run before it, so the reason is the one a walk of the whole
    chain gives). The earliest break wins. False once the chain is broken."""
    for result in results:
        if result.first is not None:
            assert result.last is not None
            if not walk.feed_run(result.first, result.checked, result.last):
                return False
        if result.failed is not None and not walk.feed(walk_entry(result.failed)):
            return False
    return True


def range_where(chain_key: str, low: int | None, high: int | None) -> tuple[str, dict[str, Any]]:
    """The condition (and its parameters) for a chain's rows with ``low <= seq < high``, either
    end open when None."""
    where, params = ["chain_key = %(chain_key)s"], {"chain_key": chain_key, "low": low, "high": high}
    if low is not None:
        where.append("seq >= %(low)s")
    if high is not None:
        where.append("seq < %(high)s")
    return " AND ".join(where), params


def walk_reader_range(
    reader: SnapshotReader,
    chain_key: str,
    head: Point,
    low: int | None,
    high: int | None,
    advanced: Any = None,
) -> RangeResult:
    """:func:`walk_range` over the rows ``reader`` reads in its snapshot with ``low <= seq < high``."""
    where, params = range_where(chain_key, low, high)
    chunks = reader.chunks(SELECT_FOR_WALK, where, params)
    try:
        return walk_range(chain_key, head, chunks, advanced=advanced)
    finally:
        chunks.close()


def main() -> None:
    """``python -m api.audit.walk``, a process checking one range of a big chain for ``verify``:
    reads its task as one JSON line on stdin (the database URL, the exported snapshot, the chain,
    its head, ``low`` and ``high``: on stdin, not argv, so the URL's password is not on display),
    walks the range (:func:`walk_reader_range`) on a connection of its own in that snapshot,
    writing ``{"read": n}`` after each chunk and ``{"result": …}`` at the end, one JSON line
    each, on stdout. Its parent stops it with SIGTERM; it stops by itself, after a chunk, if
    that parent is gone."""
    task = json.loads(sys.stdin.readline())
    parent = os.getppid()
    out = sys.stdout

    def advanced(count: int) -> bool:
        out.write(f'{{"read": {count}}}\n')
        out.flush()
        return os.getppid() != parent

    reader = SnapshotReader(task["url"], task["snapshot_id"], application_name=f"keel audit verify {parent}")
    try:
        head = Point(*task["head"])
        result = walk_reader_range(reader, task["chain_key"], head, task["low"], task["high"], advanced)
    finally:
        reader.close()
    out.write(json.dumps({"result": result.as_json()}) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
