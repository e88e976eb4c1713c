"""``verify``: walk a chain from its start (or its newest checkpoint) to its recorded head.

Every entry must follow the one before it (seq + 1), carry its hash as ``prev_hash``, and hash to
its own ``hash``; the walk must end exactly at the head the database recorded. The first entry
that does not is named, with the reason. Memory stays flat: rows stream in chunks, read and
hashed in a worker thread on a second connection that shares the walk's snapshot.

A big chain (``Split``: 100,000 entries or more by default) is checked in contiguous ranges of
its seqs at once, the first by that worker thread, each other one by a process of its own
(``python -m api.audit.walk``, started for this verify and ended with it) reading in the same
exported snapshot; the ranges are then linked in order through ``ChainWalk``, so the report is
the one a walk of the whole chain gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.audit.rows import SELECT_FOR_WALK, SnapshotReader, snapshot
from api.audit.walk import (
    Broken,
    ChainReport,
    ChainWalk,
    Point,
    RangeResult,
    VerifyReport,
    link_ranges,
    walk_reader_range,
)
from api.db.engine import libpq_url
from api.errors import ServiceUnavailable

if TYPE_CHECKING:
    from api.settings import Settings

__all__ = ["Broken", "ChainReport", "ChainWalk", "Point", "Split", "VerifyReport", "verify", "verify_chain"]

#: How often a verify split across processes reports their progress (seconds).
PROGRESS_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Split:
    """When and how widely a chain is verified across processes: a chain of at least
    ``min_entries`` entries (its head's seq less its newest checkpoint's) in as many contiguous
    ranges as ``processes`` and the machine's CPUs allow; 1 process: never split."""

    processes: int
    min_entries: int

    @classmethod
    def of(cls, settings: Settings) -> Split:
        return cls(settings.audit_verify_processes, settings.audit_verify_split_entries)

    def ranges(self, start: int, head: int) -> list[tuple[int | None, int | None]]:
        """The ranges ``[low, high)`` of seqs for a chain whose entries after ``start`` (its newest
        checkpoint, or 0) run to ``head``: one, open at both ends, below the threshold; else each
        range about as long as the others, the first open below and the last open above (so
        every row a walk of the whole chain would read, past the head or before a checkpoint,
        is read by one of them)."""
        entries = head - start
        ways = min(self.processes, os.cpu_count() or 1, max(entries, 1))
        if entries < self.min_entries or ways < 2:
            return [(None, None)]
        bounds: list[int | None] = [None]
        bounds += [start + 1 + entries * i // ways for i in range(1, ways)]
        bounds.append(None)
        return list(itertools.pairwise(bounds))


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
    split: Split,
) -> ChainReport:
    """One chain: its head and checkpoints read on ``conn``, its rows read and hashed in a worker
    thread through ``reader`` (the same snapshot), so the event loop keeps serving meanwhile; a
    big chain in ranges, by processes that read in ``reader``'s snapshot (:func:`_in_processes`)."""
    head, checkpoints = await chain_state(conn, chain_key)
    walk = ChainWalk(chain_key, head=head, checkpoints=checkpoints)
    if head is not None:
        ranges = split.ranges(max(checkpoints, default=0), head.seq)
        if len(ranges) > 1:
            results = await _in_processes(reader, chain_key, head, ranges, progress)
            link_ranges(walk, results)
            return walk.finish()
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


async def _in_processes(
    reader: SnapshotReader,
    chain_key: str,
    head: Point,
    ranges: list[tuple[int | None, int | None]],
    progress: Callable[[int], None] | None,
) -> list[RangeResult]:
    """Each range checked at once: the first by a worker thread here, through ``reader`` (as a
    small chain is), every other one by a process of its own (:func:`_range_process`), all started
    for this chain and ended before this returns. Progress: the rows each range has read, summed
    every PROGRESS_SECONDS. A range that breaks ends the later ones (the earliest break wins).
    Cancelled (the client went away, the server stopping), or a range failing, the thread is told
    to stop (at its next chunk) and the processes are terminated, and all of them are waited for."""
    stop = threading.Event()
    counts = [0] * len(ranges)

    def advanced(count: int) -> bool:
        counts[0] += count
        return stop.is_set()

    here = asyncio.ensure_future(
        asyncio.to_thread(walk_reader_range, reader, chain_key, head, *ranges[0], advanced)
    )
    task = {
        "url": reader.url,
        "snapshot_id": reader.snapshot_id,
        "chain_key": chain_key,
        "head": [head.seq, head.hash, None if head.entry_id is None else str(head.entry_id)],
    }
    others = [
        asyncio.ensure_future(_range_process({**task, "low": low, "high": high}, counts, index))
        for index, (low, high) in enumerate(ranges[1:], start=1)
    ]
    futures: list[asyncio.Future[RangeResult]] = [here, *others]
    try:
        needed, reported = len(futures), 0  # (the ranges whose results the report can need)
        while not all(f.done() for f in futures[:needed]):
            await asyncio.wait(futures[:needed], timeout=PROGRESS_SECONDS)
            read = sum(counts)
            if progress is not None and read > reported:
                progress(read - reported)
                reported = read
            for at, future in enumerate(futures[:needed]):
                if not future.done():
                    continue
                if future.exception() is not None:  # a range that failed (its connection, say)
                    future.result()
                if future.result().failed is not None:  # broken here: no later range can matter
                    for later in futures[at + 1 : needed]:
                        later.cancel()
                    needed = at + 1
                    break
        return [f.result() for f in futures[:needed]]
    finally:
        stop.set()
        for other in others:
            other.cancel()  # (each terminates its process and waits for it)
        await _until_done(asyncio.wait(futures))
        for future in futures:
            if future.done() and not future.cancelled():
                future.exception()  # (retrieved: when it matters, the caller has heard of it)


#: How a range's process starts: ``api.audit.walk`` run as a program, in a fresh interpreter that
#: imports that module only (not the app, nor the parent's main module, as a multiprocessing
#: ``spawn`` child would: 1.4 s of CPU under ``keel serve``), with the parent's import path.
_RANGE_PROGRAM = (sys.executable, "-m", "api.audit.walk")
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])


async def _range_process(task: dict[str, Any], counts: list[int], index: int) -> RangeResult:
    """One range walked by ``python -m api.audit.walk`` (:func:`api.audit.walk.main`): its task
    written on its stdin, its progress (rows read, into ``counts[index]``) and result read from
    its stdout. Cancelled, or failing, it terminates the process and waits for it. A process that
    cannot start, dies or answers nonsense is a 503: the verification could not finish.

    Started by ``subprocess`` in a thread, not by the event loop: uvloop's spawn runs the parent's
    fork handlers in the child, and after Prefect's flows ran in the process the child died of
    SIGSEGV before its first line (seen in the suite, where flows and the API share a process)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (_IMPORT_ROOT, os.environ.get("PYTHONPATH")))),
    }
    failed = ServiceUnavailable(f"the verification of chain {task['chain_key']} could not finish; retry")
    try:
        process = await asyncio.to_thread(
            subprocess.Popen, _RANGE_PROGRAM, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
    except OSError as exc:  # (no process to start: out of processes or memory)
        raise failed from exc
    try:
        return await asyncio.to_thread(_talk, process, task, counts, index, failed)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await asyncio.to_thread(process.wait)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def _talk(
    process: subprocess.Popen[bytes], task: dict[str, Any], counts: list[int], index: int, failed: Exception
) -> RangeResult:
    """The parent's side of :func:`api.audit.walk.main`, blocking (in a thread of its own)."""
    assert process.stdin is not None and process.stdout is not None
    result: RangeResult | None = None
    try:
        process.stdin.write(json.dumps(task).encode() + b"\n")
        process.stdin.close()
        for line in process.stdout:
            message = json.loads(line)
            if "read" in message:
                counts[index] += message["read"]
            else:
                result = RangeResult.of_json(message["result"])
    except (OSError, ValueError) as exc:  # it died (a closed pipe) or wrote garbage
        raise failed from exc
    code = process.wait()
    if code != 0 or result is None:
        raise failed from RuntimeError(f"the process verifying a range ended with {code}")
    return result


async def _until_done(work: Awaitable[Any]) -> None:
    """Await ``work`` to its end even if cancelled meanwhile (then re-raise the cancellation)."""
    done = asyncio.ensure_future(work)
    cancelled = False
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            cancelled = True
    done.result()
    if cancelled:
        raise asyncio.CancelledError


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
    split: Split,
) -> VerifyReport:
    """Verify one chain, or every chain, in one consistent snapshot (a big chain split across
    processes as ``split`` says: ``Split.of(settings)``)."""
    report = VerifyReport()
    async with snapshot(engine) as conn:
        keys = [chain_key] if chain_key is not None else await chain_keys(conn)
        if on_total is not None:
            on_total(await expected_entries(conn, keys if chain_key is not None else None))
        async with walk_reader(engine, conn) as reader:
            for key in keys:
                report.chains.append(await verify_chain(conn, reader, key, progress=progress, split=split))
    return report
