"""Audit log figures, each beside a baseline measured in the same run.

- appends/s through ``POST /v1/audit-logs`` (8 concurrent clients), with the chain verified after;
  baseline: the same server answering an authenticated read (``GET /v1/me``) at the same concurrency.
- ``verify`` over 1,000,000 entries in entries/s; baseline: Postgres alone streaming the same
  rows (``COPY (SELECT …) TO STDOUT``), and Python alone hashing them (``entry_hash``, the
  issue's "hashing-alone rate": while generating them, and again right after ``verify``). A
  chain that big is verified across processes (docs/audit.md); the server's CPU per verified
  entry counts them.
- export of 1,000,000 entries through the streaming endpoint and through ``keel audit export``,
  with the exporting process's peak RSS (must stay under 200 MB); same COPY baseline.

- audit stream delivery in entries/s: a backlog streamed by the stream worker to a loopback
  Splunk-HEC-compatible receiver (its own process); baseline: the receiver's own capacity, the same
  batches POSTed to it back to back over one connection (an ordered stream uses one at a time).

It starts its own embedded Postgres in a temporary directory and the API in a subprocess on a
port the OS picks. ``KEEL_BENCH_AUDIT_ENTRIES`` shrinks the large figures for a quick look;
``KEEL_BENCH_AUDIT_PART=batch`` or ``=verify`` (or ``=streams``) runs one figure alone, with its
baseline. The batch figure also prints the API server's CPU per entry (psutil, user + system):
on a shared machine the rates swing with the neighbours, the CPU an entry costs much less.

What was profiled (issue 18's two missed figures), and what changed:

- ``verify``: ``py-spy record -r 200`` of an in-process ``verify`` over 200,000 bulk-loaded
  entries. Before: the json module's encoder 32% of samples (the bench's metadata holds a float,
  so every entry takes the definition's path — the hashing-alone baseline too); ``as_entry``
  (a 20-key dict per row, two JSON parses), ``canonical``'s walk of that mapping and a ``Point``
  per entry in ``ChainWalk.feed`` about a quarter; psycopg's fetch 1.5 µs of CPU per row.
  ``EXPLAIN (ANALYZE, BUFFERS)``: the index scan on ``uq_audit_log_chain_key_seq`` with the casts
  3.7 µs/row (shared hits only); building each row as JSON in Postgres (``json_build_array``,
  ``row_to_json``) 10-12 µs/row, a sort to disk when the planner chose a seq scan: rejected. A
  binary COPY parsed by psycopg costs the client more (2.5 µs/row) than the named cursor (1.5).
  Now: ``rows.SELECT_FOR_WALK`` reads the hashed fields in ``chain.CANONICAL_FIELDS`` order, and
  ``ChainWalk.feed_rows`` hashes each row with ``canonical_values`` (the body built once, no
  mapping per entry; hashlib fed the bytes), a row it does not accept going through ``feed`` for
  the reason. Python CPU per verified entry (``time.process_time``, interleaved runs on one
  database): 11.7 → 9.5 µs; hashing alone (``entry_hash``) 6.4-7.2 µs on the same machine.
  ``KEEL_BENCH_AUDIT_PART=verify KEEL_BENCH_AUDIT_ENTRIES=200000``, the tree before and after,
  back to back: server CPU per verified entry 12.00 → 9.10 µs beside hashing alone's 7.17 and
  7.19 µs (CPU ratio 0.60 → 0.79); rates 25,329 → 42,349/s beside 39,754 and 47,691/s. Again
  at a lighter load: 10.25 → 8.30 µs beside 6.50 and 6.43 (0.63 → 0.77). The wall-clock ratio
  swings with the neighbours (0.93 before, 0.84 after in that pair), the CPU one much less.
  What is left besides the hash: psycopg's fetch (~1.5 µs), two JSON parses and the address
  (~0.8 µs), the loop (~0.4 µs) — the first in Python's process whatever the protocol.
  Then (task E, the fetch): timed apart in one process over 100,000 rows (``time.process_time``),
  the async named cursor cost 1.5-2.0 µs a row, the same cursor on a blocking connection 0.92-1.0:
  psycopg's asyncio wait takes an event-loop round (``add_reader``, a future, a timer) per libpq
  read, and libpq reads 16 kB at a time (4,461 waits for 100,000 rows, counted by wrapping
  ``loop.add_reader``), ~11 µs each. Growing libpq's buffer first (one 4 MB value) only took that
  to 3,500. A chunked ``stream()`` (libpq 17) on the blocking connection: 0.78 µs a row with the
  walk's 17 columns, every column ~0.055 µs (3 columns: 0.26; ``EXPLAIN``: the same index scan
  on ``uq_audit_log_chain_key_seq`` as the cursor's, no sort); COPY text parsed by psycopg
  (``rows()``) 2.29, COPY read raw and split 0.97; a reader thread feeding a queue lost to the GIL
  (the reader waits a switch interval for each 16 kB). Now: ``verify`` exports its snapshot and a
  worker thread reads and hashes each chain on a second, blocking connection that imports it
  (``rows.SnapshotReader``, one chunked stream: Postgres keeps sending while Python hashes), and
  metadata and targets arrive as one JSON text (a column and a parse fewer). The event loop is
  free meanwhile. Before/after, the tree of main (a checkout under /tmp) and this one, run in
  turn on one machine within the hour (load average 7-17 on its 2 cores):
  in-process ``verify`` of 200,000 bulk entries (``time.process_time``, pairs of 2-3 rounds, CPU
  ratio = hashing alone / verify): the thread and stream alone 0.75, 0.75, 0.75 → 0.79, 0.79,
  0.80; with the one JSON text too 0.74, 0.72, 0.74, 0.73, 0.77, 0.75 → 0.82, 0.80, 0.82, 0.82,
  0.79, 0.83 (medians 0.74 → 0.82); the same through the API, ``KEEL_BENCH_AUDIT_PART=verify
  KEEL_BENCH_AUDIT_ENTRIES=200000``, eight pairs (18:06-18:37 UTC): server CPU per verified
  entry 9.05, 9.60, 9.30, 9.15, 9.40, 9.40, 9.10, 9.10 µs → 9.20, 8.80, 8.65, 8.85, 8.80, 8.95,
  8.80, 8.65 µs (medians 9.23 → 8.80) beside hashing alone's 6.85-7.13 / 6.70-7.78 µs; CPU ratio
  0.78, 0.73, 0.75, 0.76, 0.76, 0.75, 0.75, 0.77 → 0.77, 0.79, 0.83, 0.79, 0.88, 0.81, 0.79, 0.77
  (medians 0.755 → 0.79). Over 1,000,000 entries, one pair (load 8 then 12-17): 8.71 → 8.65 µs
  beside 6.72 and 6.83 (0.77 → 0.79); 34,031 → 25,535 entries/s beside 39,361 and 29,963/s
  (0.86, 0.85). The wall ratio is the neighbours' on this machine: against the rate measured
  while bulk-loading (minutes before, under other neighbours) 0.66-1.10 before, 0.70-0.97 after;
  against the rate right after ``verify`` (the last three pairs) 0.88, 0.67, 1.38 before and
  0.80, 1.04, 0.55 after. Left per entry besides the hash (in-process): the stream's fetch
  ~0.8 µs, the JSON parse, the list and the address ~0.45, the loop ~0.15, less the ~0.3 by
  which ``canonical_values`` beats ``canonical`` over a mapping.
  Then (task A of round 7, the rate: verify 0.73 of hashing alone by rate on a quiet machine,
  0.85 by CPU; the walk thread waited ~15% of the time for rows, and a prefetch thread gained
  nothing under the GIL): a chain of 100,000 entries or more (``KEEL_AUDIT_VERIFY_SPLIT_ENTRIES``)
  is verified in K = min(``KEEL_AUDIT_VERIFY_PROCESSES`` (4), CPUs) contiguous seq ranges at once,
  the first by the walk thread, each other by a ``python -m api.audit.walk`` child in the same
  exported snapshot, linked in order through ``ChainWalk.feed_run``. The server's CPU figure
  below now counts the children it waited for (psutil ``children_user`` + ``children_system``).
  Profiled: a multiprocessing ``spawn`` pool first, in-process over 300,000 bulk entries
  (``resource.getrusage`` of self and children, interleaved one-thread/split rounds): children
  13.7 µs per verified entry beside 5.1-5.5 for the parent, because a spawn child re-imports the
  parent's main module (there, the whole bench; under ``keel serve``, ``import api.cli``: 1.41 s of
  CPU by ``/usr/bin/time``). A plain child running ``api.audit.walk`` imports it, ``rows``,
  ``chain``, psycopg and msgspec only (``-X importtime``: no SQLAlchemy once ``normalize_ip`` moved
  to ``chain.py`` and ``rows``'s SQLAlchemy imports became annotations only): ~0.35 s of CPU to
  start (psycopg's import 0.34 s of it, on this loaded machine), 0.35 µs an entry over 1,000,000.
  Same rounds after (300,000 entries, load 5): one thread 9.87, 9.92, 10.78 µs per entry; split
  10.80, 11.77, 11.73 (self 5.05-5.46 + children 5.75-6.31), 38,042 → 40,425/s, 35,957 → 33,779/s,
  28,547 → 35,079/s; over 1,000,000 (load 6-7): 11.35 → 11.60 µs, 38,415 → 51,436/s; 12.22 →
  13.61 µs, 35,582 → 33,793/s. CPU per entry rises by the child's start-up and some contention; the
  rate gains only what a free core gives, and this machine (2 cores, load 5-7 all evening) seldom
  had one. ``KEEL_BENCH_AUDIT_PART=verify`` over 1,000,000 entries, main (a checkout under /tmp)
  then this tree, back to back, one venv: pair 1 (20:39-20:44 UTC, load 7.1 → 5.6): 35,932 →
  28,759 entries/s beside hashing alone 82,248 and 36,582/s (rate ratio 0.44 → 0.79; right after
  verify 63,872 and 27,074/s: 0.56 → 1.06), server CPU per verified entry 10.42 → 11.91 µs beside
  9.48 and 10.45 (CPU ratio 0.91 → 0.88); pair 2 (20:48-20:54, load 7.6 → 7.4): 28,522 → 43,526/s
  beside 34,970 and 43,118/s (0.82 → 1.01; right after 35,923 and 44,028/s: 0.79 → 0.99), 10.95 →
  11.47 µs beside 9.91 and 9.11 (0.91 → 0.79); pair 3 (20:57-21:03, load 6.2 → 7.5): 27,314 →
  55,825/s beside 41,509 and 36,416/s (0.66 → 1.53; right after 44,246 and 52,316/s: 0.62 →
  1.07), 11.16 → 11.75 µs beside 9.39 and 8.69 (0.84 → 0.74). So: the rate ratio passes 0.8 after
  (0.79-1.53; 0.99-1.07 against the rate right after verify, 0.56-0.79 before), while the CPU per
  entry rises 0.5-1.5 µs (~5-14%) and the CPU ratio falls (0.84-0.91 → 0.74-0.88): the split buys
  wall time with a second core, not CPU; the absolute rates are the neighbours'. Quick looks at
  300,000 with the earlier spawn versions: two spawn children,
  42,651 → 58,417/s (ratio 0.66 → 0.64, right after 0.82 → 0.88; CPU 10.13 → 11.13 µs); the thread
  and one spawn child, 54,038 → 57,523/s (0.91 → 1.37, right after 0.44 → 1.13; 9.57 → 11.17 µs).
- batch: ``py-spy record --pid`` of the API server under ``KEEL_BENCH_AUDIT_PART=batch``. First pass:
  the JSON depth check cut to 1.0 ms a 1,000-entry body, ``values_hash`` of plain values, one future
  per request, the next group chained while the one before is in Postgres (pipelined group commit);
  33.7-36.7 → 27.8-30.7 µs per entry. Then (task F of round 8; ~45 µs per entry against 8-10 per
  batched event on main): py-spy put the request side at ~75% of samples, the commit at ~25%;
  canonical encoding ~3.6 µs an entry in-process (``time.process_time``: the dict built, two float
  walks, the encode), ``new_id`` and ``str`` of the ``uuid.UUID`` ~8% of samples, a 20-item insert row
  built and encoded again per entry, a frozen dataclass per entry (``Prepared``, ``Answer``), and,
  counted by gc callbacks in the server, 5-7 µs per entry of collections (each 1,000-entry request
  kept thousands of tracked lists, dicts and dataclasses alive). Now (``api.audit.batch``,
  ``chain.canonical_parts``): each entry is encoded once when it is checked — its id (a UUIDv7 as
  text) chosen, its canonical bytes written as the bytes before and after seq's digits, one msgspec
  encode of a Struct per half (the json module where the definition's could differ; proved in the
  docstring, held by a hypothesis test); chaining is a concatenation and a SHA-256, and the insert row
  is those bytes with seq spliced in plus prev_hash and hash (the insert reads the canonical object's
  fields; one binary JSONB parameter). A batch whose every entry decodes is decoded in one pass (no
  depth check needed: these types never descend past their own depth), else entry by entry as before;
  the decoding and checking run with the collector held off, each decoded entry freed once encoded,
  and the per-entry objects that live on (``Prepared``, ``Answer``, results, the input Structs) are
  ``gc=False`` Structs: collections 5-7 → 0.1 µs per entry. Back to back, main (a checkout under /tmp,
  ``git archive``) and this tree on one venv, ``KEEL_BENCH_AUDIT_PART=batch`` in turn, three pairs
  (00:15-00:19 UTC, load 5.5-8.5): server CPU per entry 51.2, 49.3, 47.5 → 27.3, 27.5, 23.7 µs beside
  9.7, 8.7, 10.8 / 8.7, 7.7, 8.0 µs per batched event (ratio 5.3, 5.7, 4.4 → 3.1, 3.6, 3.0; medians
  49.3 → 27.3 µs); 6,040, 6,019, 6,678 → 7,738, 8,186, 9,016 entries/s beside 26,255, 29,646, 22,827 /
  29,677, 32,049, 30,206 events/s. Before the last change (the float walks skipped: the caller's
  checks tell), 00:00-00:05, load 5-7, the first main run beside a ``make lint``: 49.8, 46.3, 55.3 →
  31.2, 31.3, 32.7 µs (9.0, 9.3, 11.0 / 10.0, 7.8, 10.3 per event); 3,132, 5,896, 4,687 → 5,882,
  7,072, 6,016 entries/s; at 23:49 (load 2.7-3.8) 51.7 → 24.5 µs (10.7 / 6.7 per event), 7,127 → 9,999
  entries/s. The rate this hour is the neighbours' and Postgres's: ``EXPLAIN (ANALYZE, BUFFERS, WAL)``
  of one 2,000-row insert (load ~4): 68-90 ms, 34-45 µs an entry — ``jsonb_array_elements`` and the
  casts 9-12 ms, the heap and six indexes ~40-58 ms (~6 WAL records, ~1.05 kB an entry), the foreign
  key to organizations checked per row 8-12 ms, the chain trigger 7 ms once. One chain's appends are
  serialized there, so that, not Python, bounds one org's rate now: left untouched here (a per-row FK
  and the indexes are guarantees and reads to weigh, with their plans). Left in Python per entry: the
  typed decode ~1.2 µs, checks ~1.7, ``iso`` ~1, the two half encodes ~1.5 each with their glue,
  chaining ~2 (timed in-process, load 3-8).
  Then (session 9, Postgres's side): the backend's CPU (``/proc/PID/schedstat``) around one
  2,000-entry insert into a chain of 100,000 (a private server, 9-11 inserts each rolled back,
  variants in one transaction each): 44-47 ms at the minimum; without the foreign key to
  organizations 39-44 (its check query ran per row); with the key columns compared as bytes
  (``COLLATE "C"``: Postgres 16 compares C.UTF-8 text through ``strcoll``, without abbreviated
  keys) 42-45; both 35-37; ``jsonb_to_recordset`` instead of the per-field ``->>`` no better
  (53.6 against 52.3). Migration 0095 does both (the link trigger checks and key-locks each
  organization once per statement; an organization with entries cannot be deleted): 47.3 and
  48.3 → 38.5 and 40.7 ms (0090 and 0095 in turn on one database). The figure now takes turns for
  ``KEEL_BENCH_AUDIT_BATCH_ROUNDS`` (3) rounds of audit then events batches and prints the median
  with every round, and the CPU of Postgres's backends beside the server's: a single 60-batch
  phase read 16,837-25,586/s in five runs of one tree within ten minutes. Three pairs, main's tree
  (f895f5a) then 0095's, taking turns (02:22-02:27 UTC, load ~1): 23,920 / 22,706 / 21,896 →
  21,804 / 27,499 / 26,216 entries/s at the median round; Postgres CPU per entry 28.4 / 30.0 /
  31.1 → 28.7 / 23.8 / 25.3 µs, the server's 19.3-21.1 → 18.1-21.8 µs.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import CpuMeter, postmaster, wait_for_answer  # noqa: E402

from api.audit.chain import GENESIS, entry_hash  # noqa: E402
from api.auth.models import PlatformRole  # noqa: E402
from api.db.base import new_id  # noqa: E402
from api.db.embedded import start_embedded_postgres  # noqa: E402
from api.db.engine import make_async_engine, make_sessionmaker  # noqa: E402
from api.db.migrate import upgrade  # noqa: E402
from api.users import create_user_with_token  # noqa: E402

ENTRIES = int(os.environ.get("KEEL_BENCH_AUDIT_ENTRIES", "1000000"))
APPENDS = int(os.environ.get("KEEL_BENCH_AUDIT_APPENDS", "2000"))
WRITERS = 8
RSS_LIMIT_MB = 200
ACTIONS = ("document.shared", "document.viewed", "member.removed")
KEEL = str(Path(sys.executable).with_name("keel"))

# uvicorn's own ``fd=`` takes every inherited socket for a Unix one, which leaves Nagle's algorithm
# on for TCP (40 ms stalls per answer); a socket object built from the descriptor knows its family.
SERVER = """
import socket, sys, uvicorn
from api.app import create_app
from api.server import server_config
from api.settings import Settings
sock = socket.socket(fileno=int(sys.argv[1]))
settings = Settings(database_url=sys.argv[2])
uvicorn.Server(server_config(create_app(settings), settings, log_level="warning")).run(sockets=[sock])
"""


def say(text: str) -> None:
    print(text, flush=True)


@contextmanager
def api_server(database_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The API in its own process, on a socket bound here to a port the OS chose (no race for it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(sock.fileno()), database_url], pass_fds=[sock.fileno()], cwd=ROOT
    )
    try:
        wait_for_answer(f"{url}/health", proc, "the API")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        sock.close()


class PeakRss:
    """Samples a process's resident memory every 20 ms; ``peak`` in MB."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def concurrently(total: int, call: Callable[[httpx.Client, int], httpx.Response], base_url: str) -> float:
    """Run ``call`` ``total`` times from WRITERS threads; requests per second. Every answer must be 2xx."""
    failures: list[str] = []
    start = threading.Barrier(WRITERS + 1)

    def worker(n: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            start.wait()
            for i in range(n, total, WRITERS):
                response = call(client, i)
                if response.status_code >= 300:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return total / elapsed


def product_entry(i: int, org_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": "document.shared",
        "occurred_at": datetime.now(UTC).isoformat(),
        "actor": {"type": "user", "id": f"user_{i % 97}", "name": "Bench User"},
        "targets": [{"type": "document", "id": f"doc_{i}"}],
        "context": {"ip": "203.0.113.7", "user_agent": "bench/1.0"},
        "metadata": {"i": i, "permission": "edit"},
    }
    if org_id:
        body["org_id"] = org_id
    return body


def make_world(url: str, database_url: str) -> tuple[str, list[tuple[str, str]]]:
    """A platform admin's token (it owns the orgs) and ten orgs with an ingest key each."""

    async def user() -> str:
        engine = make_async_engine(database_url, pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                created = await create_user_with_token(
                    session, email="bench@keel.bench", name="Bench", platform_role=PlatformRole.admin
                )
            return created.token
        finally:
            await engine.dispose()

    token = asyncio.run(user())
    headers = {"Authorization": f"Bearer {token}"}
    orgs = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for n in range(WRITERS + 2):
            org = client.post("/v1/orgs", json={"name": f"Bench {n}", "slug": f"bench-{n}"}).json()["id"]
            key = client.post(f"/v1/orgs/{org}/ingest-keys", json={"name": "bench"}).json()["token"]
            orgs.append((org, key))
    return token, orgs


def bulk_entry(org_id: str, i: int, seq: int, when: datetime) -> dict[str, Any]:
    """The ``i``-th bulk-loaded entry, as Keel hashes it."""
    return {
        "id": str(new_id()), "organization_id": org_id, "seq": seq,
        "occurred_at": when.isoformat(timespec="microseconds"), "actor_type": "user",
        "actor_id": f"user_{i % 997}", "actor_name": "Bulk User", "action": ACTIONS[i % 3],
        "resource_type": "document", "resource_id": f"doc_{i}",
        "metadata": {"i": i, "permission": "edit", "ratio": 0.5}, "ip": f"203.0.113.{i % 250}",
        "user_agent": "Mozilla/5.0 (bench)", "request_id": f"req-{i}", "source": "product",
        "targets": [{"type": "document", "id": f"doc_{i}", "name": None}],
    }  # fmt: skip


def hashing_alone(org_id: str, count: int = 100_000) -> tuple[float, float]:
    """Hashing bulk entries alone (``entry_hash``), in a tight loop, right after ``verify``: CPU
    microseconds per entry (this process, ``time.process_time``; less swayed by the neighbours
    than a rate) and entries/s of wall time (the same moment's load as ``verify``'s, unlike the
    rate measured while bulk-loading)."""
    base = datetime.now(UTC)
    entries = [bulk_entry(org_id, i, i + 1, base + timedelta(microseconds=2_000 * i)) for i in range(count)]
    prev = GENESIS
    began, wall = time.process_time(), time.perf_counter()
    for entry in entries:
        prev = entry_hash(entry, prev)
    return (time.process_time() - began) / count * 1e6, count / (time.perf_counter() - wall)


def bulk_load(database_url: str, org_id: str, count: int) -> float:
    """Append ``count`` product entries to the org's chain with COPY, hashed exactly as Keel hashes them.

    Triggers stay on: the chain-link trigger checks the whole COPY at once and moves the head.
    Returns Python's hashing rate (entries/s) over the generation, a baseline for verify.
    """
    hashing = 0.0
    with psycopg.connect(database_url) as conn:
        seq, prev = conn.execute(
            "SELECT seq, hash FROM audit_chain_heads WHERE chain_key = %s", [org_id]
        ).fetchone() or (0, GENESIS)
        base = datetime.now(UTC) - timedelta(days=30)
        columns = ("id", "chain_key", "seq", "organization_id", "occurred_at", "recorded_at", "actor_type",
                   "actor_id", "actor_name", "action", "resource_type", "resource_id", "metadata", "ip",
                   "user_agent", "request_id", "source", "targets", "prev_hash", "hash")  # fmt: skip
        with conn.cursor().copy(f"COPY audit_log ({', '.join(columns)}) FROM STDIN") as copy:
            for i in range(count):
                seq += 1
                when = base + timedelta(microseconds=2_000 * i)
                entry = bulk_entry(org_id, i, seq, when)
                began = time.perf_counter()
                digest = entry_hash(entry, prev)
                hashing += time.perf_counter() - began
                copy.write_row((
                    entry["id"], org_id, seq, org_id, when, when, "user", entry["actor_id"], "Bulk User",
                    entry["action"], "document", entry["resource_id"], json.dumps(entry["metadata"]),
                    entry["ip"], entry["user_agent"], entry["request_id"], "product",
                    json.dumps(entry["targets"]), prev, digest,
                ))  # fmt: skip
                prev = digest
        conn.commit()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_log")
    return count / hashing


SAME_ROWS = (
    "COPY (SELECT chain_key, seq, id::text, organization_id::text, occurred_at, recorded_at, source, action,"
    " actor_type, actor_id, actor_name, resource_type, resource_id, targets::text, metadata::text, host(ip),"
    " user_agent, request_id, prev_hash, hash FROM audit_log WHERE chain_key = '{org}' ORDER BY seq)"
    " TO STDOUT"
)


def copy_out_rate(database_url: str, org_id: str, rows: int) -> float:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        began = time.perf_counter()
        with cur.copy(SAME_ROWS.format(org=org_id)) as copy:
            for _ in copy:
                pass
        return rows / (time.perf_counter() - began)


STREAM_ENTRIES = int(os.environ.get("KEEL_BENCH_AUDIT_STREAM_ENTRIES", "50000"))
HEC_TOKEN = "bench-hec-token-0123456789"
# The receiver runs in its own process, so it does not share the worker's interpreter.
RECEIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.receivers import Receiver, splunk_hec
receiver = Receiver(splunk_hec(sys.argv[2]))
receiver.arrivals = type("Discard", (list,), {"append": lambda self, item: None})()  # keep no bodies
with receiver:
    print(receiver.port, flush=True)
    sys.stdin.read()
"""


def stream_delivery(database_url: str, org_id: str, tmp: Path) -> list[tuple[str, str, str]]:
    """Entries/s delivered by the stream worker to a loopback HEC receiver, beside the receiver's capacity."""
    from api.audit.streams.delivery import StreamConfig, StreamWorker
    from api.audit.streams.destinations import Target, prepare
    from api.audit.streams.models import AuditStream, StreamFormat, StreamStatus, StreamType
    from api.audit.streams.secrets import Sealer
    from api.settings import Settings

    settings = Settings(database_url=database_url, data_dir=tmp, webhook_allow_private_targets=True)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT seq FROM audit_chain_heads WHERE chain_key = %s", [org_id]).fetchone()
    start = row[0] if row else 0
    bulk_load(database_url, org_id, STREAM_ENTRIES)
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(ROOT), HEC_TOKEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert receiver.stdout is not None
        url = f"http://127.0.0.1:{int(receiver.stdout.readline())}"
        stream_id = new_id()

        async def deliver() -> tuple[float, bytes]:
            engine = make_async_engine(database_url, pool_size=1)
            try:
                async with make_sessionmaker(engine)() as session, session.begin():
                    session.add(
                        AuditStream(
                            id=stream_id,
                            organization_id=org_id,
                            name="bench",
                            type=StreamType.splunk_hec,
                            url=url,
                            format=StreamFormat.keel,
                            status=StreamStatus.active,
                            delivered_seq=start,
                            failures=0,
                            token_ciphertext=Sealer.of(settings).seal(stream_id, HEC_TOKEN),
                        )
                    )
            finally:
                await engine.dispose()
            async with StreamWorker(settings, StreamConfig()) as worker:
                began = time.perf_counter()
                await worker.run_until_idle(max_seconds=3600, horizon=0)
                elapsed = time.perf_counter() - began
                if worker.stats.delivered != STREAM_ENTRIES or worker.stats.failures:
                    raise RuntimeError(
                        f"the stream delivered {worker.stats.delivered}: {worker.stats.errors[:3]}"
                    )
                items = await worker._items(uuid.UUID(org_id), (start, 0), StreamConfig().batch_size)
            target = Target(stream_id, org_id, StreamType.splunk_hec, url, StreamFormat.keel, HEC_TOKEN, None)  # type: ignore[arg-type]
            return STREAM_ENTRIES / elapsed, prepare(target, items).body

        rate, batch = asyncio.run(deliver())
        per_batch = StreamConfig().batch_size
        with httpx.Client(base_url=url, timeout=60) as client:
            headers = {"Authorization": f"Splunk {HEC_TOKEN}", "Content-Type": "application/json"}
            rounds, began = 0, time.perf_counter()
            while rounds * per_batch < STREAM_ENTRIES:
                response = client.post("/services/collector/event", content=batch, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"the receiver answered {response.status_code}")
                rounds += 1
            capacity = rounds * per_batch / (time.perf_counter() - began)
    finally:
        receiver.kill()
        receiver.wait()
    say(f"  stream delivery: {rate:,.0f} entries/s; the receiver alone {capacity:,.0f} entries/s")
    return [
        (
            "audit stream delivery to loopback HEC, entries/s",
            f"{rate:,.0f}",
            f"the receiver alone, same batches: {capacity:,.0f} entries/s ({rate / capacity:.2f}x)",
        )
    ]


def streams_only() -> int:
    """``KEEL_BENCH_AUDIT_PART=streams``: only the stream delivery figure, on its own database."""
    with tempfile.TemporaryDirectory(prefix="keel-bench-audit-") as tmp:
        database_url, pg = start_embedded_postgres(Path(tmp), cleanup="delete")
        try:
            upgrade(database_url)
            with api_server(database_url) as (url, _):
                _, orgs = make_world(url, database_url)
            for name, value, base in stream_delivery(database_url, orgs[-1][0], Path(tmp)):
                say(f"{name}  {value:>12}  {base}")
        finally:
            pg.cleanup()
    return 0


BATCH_ENTRIES = 1000
BATCH_REQUESTS = int(os.environ.get("KEEL_BENCH_AUDIT_BATCHES", "60"))
#: Rounds of the batch figure (audit batches, then events batches), the median printed.
BATCH_ROUNDS = int(os.environ.get("KEEL_BENCH_AUDIT_BATCH_ROUNDS", "3"))


def server_cpu(pid: int) -> CpuMeter:
    """CPU of the API server's process tree (``verify``'s range processes too) inside a block."""
    return CpuMeter({"server": psutil.Process(pid)}, {})


@dataclass
class BatchFigures:
    """Each round's rates (entries or events per second), and CPU microseconds per entry (per event)
    over all rounds: the API server's, Postgres's backends'."""

    audit: list[float]
    events: list[float]
    audit_cpu: dict[str, float]
    events_cpu: dict[str, float]

    @property
    def audit_rate(self) -> float:
        return statistics.median(self.audit)

    @property
    def events_rate(self) -> float:
        return statistics.median(self.events)

    def lines(self) -> list[tuple[str, str, str]]:
        """The figure rows: the median round beside the events batch's, each round, the CPU."""
        rounds = ", ".join(f"{a:,.0f}/{e:,.0f}" for a, e in zip(self.audit, self.events, strict=True))
        return [
            (
                f"batch entries/s, one org ({BATCH_ENTRIES:,} a request, median of {len(self.audit)}"
                " rounds; target 20,000)",
                f"{self.audit_rate:,.0f}",
                f"events batch {self.events_rate:,.0f} events/s (rounds, entries/events: {rounds})",
            ),
            (
                "  CPU per batch entry: server / Postgres",
                f"{self.audit_cpu['server']:.1f} / {self.audit_cpu['postgres']:.1f} us",
                f"per batched event {self.events_cpu['server']:.1f} / {self.events_cpu['postgres']:.1f} us",
            ),
        ]


def batch_figures(url: str, key: str, server_pid: int, database_url: str) -> BatchFigures:
    """``POST /v1/audit-logs/batch`` into one org (1,000 entries a request, WRITERS clients), and the
    same server's ``POST /v1/events/batch`` of 1,000 events, taking turns for BATCH_ROUNDS rounds.
    Request bodies are encoded before the clock starts, so the figures are the server's, not the
    clients' JSON encoding; each round's events are new (no duplicates)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stored = 0
    counting = threading.Lock()
    audit_bodies = [
        json.dumps({"entries": [product_entry(i * BATCH_ENTRIES + n) for n in range(BATCH_ENTRIES)]}).encode()
        for i in range(BATCH_REQUESTS)
    ]

    def event_bodies(round_: int) -> list[bytes]:
        return [
            json.dumps(
                {
                    "events": [
                        {"event": "bench.batch", "user_id": f"u{n}", "message_id": f"b-{round_}-{i}-{n}"}
                        for n in range(BATCH_ENTRIES)
                    ]
                }
            ).encode()
            for i in range(BATCH_REQUESTS)
        ]

    def audit_batch(c: httpx.Client, i: int) -> httpx.Response:
        nonlocal stored
        response = c.post("/v1/audit-logs/batch", content=audit_bodies[i], headers=headers)
        if response.status_code == 200:
            accepted = response.json()["accepted"]
            with counting:  # (`+=` from several threads can lose an update)
                stored += accepted
        return response

    trees = {"server": psutil.Process(server_pid), "postgres": postmaster(database_url)}
    figures = BatchFigures([], [], {"server": 0.0, "postgres": 0.0}, {"server": 0.0, "postgres": 0.0})
    for round_ in range(BATCH_ROUNDS):
        bodies = event_bodies(round_)
        stored = 0
        with CpuMeter(trees, {}) as audit_cpu:
            figures.audit.append(concurrently(BATCH_REQUESTS, audit_batch, url) * BATCH_ENTRIES)
        if stored != BATCH_REQUESTS * BATCH_ENTRIES:
            raise RuntimeError(f"the batches stored {stored} entries, not {BATCH_REQUESTS * BATCH_ENTRIES}")
        with CpuMeter(trees, {}) as events_cpu:
            figures.events.append(
                concurrently(
                    BATCH_REQUESTS,
                    lambda c, i: c.post("/v1/events/batch", content=bodies[i], headers=headers),  # noqa: B023
                    url,
                )
                * BATCH_ENTRIES
            )
        for name in trees:
            figures.audit_cpu[name] += audit_cpu.taken[name]
            figures.events_cpu[name] += events_cpu.taken[name]
    per = 1e6 / (BATCH_ROUNDS * BATCH_REQUESTS * BATCH_ENTRIES)
    for name in trees:
        figures.audit_cpu[name] *= per
        figures.events_cpu[name] *= per
    return figures


def part_only(part: str) -> int:
    """``KEEL_BENCH_AUDIT_PART=batch`` or ``=verify``: only that figure (and its baseline), on its own
    database — what the profiling above ran under py-spy."""
    with tempfile.TemporaryDirectory(prefix="keel-bench-audit-") as tmp:
        database_url, pg = start_embedded_postgres(Path(tmp), cleanup="delete")
        try:
            upgrade(database_url)
            with api_server(database_url) as (url, server):
                say(f"  API server pid {server.pid}")
                token, orgs = make_world(url, database_url)
                if part == "batch":
                    for name, value, base in batch_figures(url, orgs[0][1], server.pid, database_url).lines():
                        say(f"{name}  {value:>12}  {base}")
                    return 0
                big = orgs[-1][0]
                hash_rate = bulk_load(database_url, big, ENTRIES)
                headers = {"Authorization": f"Bearer {token}"}
                with (
                    httpx.Client(base_url=url, headers=headers, timeout=3600) as c,
                    server_cpu(server.pid) as cpu,
                ):
                    began = time.perf_counter()
                    report = c.get(f"/v1/orgs/{big}/audit-logs/verify").json()
                    rate = report["entries_checked"] / (time.perf_counter() - began)
                verify_cpu = cpu.taken["server"] / report["entries_checked"] * 1e6
                hash_cpu, hash_after = hashing_alone(big)
                if not report["ok"] or report["entries_checked"] < ENTRIES:
                    raise RuntimeError(f"the bulk chain does not verify: {report}")
                ratio = rate / hash_rate
                say(f"verify entries/s  {rate:>10,.0f}  hashing alone {hash_rate:,.0f}/s, ratio {ratio:.2f};"
                    f" right after {hash_after:,.0f}/s, ratio {rate / hash_after:.2f}")  # fmt: skip
                cpu_ratio = hash_cpu / verify_cpu
                say(f"  server CPU per verified entry {verify_cpu:.2f} us; hashing alone {hash_cpu:.2f} us,"
                    f" ratio {cpu_ratio:.2f}")  # fmt: skip
                return 0
        finally:
            pg.cleanup()


def main() -> int:
    part = os.environ.get("KEEL_BENCH_AUDIT_PART")
    if part == "streams":
        return streams_only()
    if part in ("batch", "verify"):
        return part_only(part)
    say(f"bench_audit: {ENTRIES:,} entries for verify/export, {APPENDS:,} appends by {WRITERS} clients")
    with tempfile.TemporaryDirectory(prefix="keel-bench-audit-") as tmp:
        database_url, pg = start_embedded_postgres(Path(tmp), cleanup="delete")
        try:
            upgrade(database_url)
            with api_server(database_url) as (url, server):
                return run(url, server, database_url, Path(tmp))
        finally:
            pg.cleanup()


def run(url: str, server: subprocess.Popen[bytes], database_url: str, tmp: Path) -> int:
    token, orgs = make_world(url, database_url)
    user_headers = {"Authorization": f"Bearer {token}"}
    (_, one_key), many = orgs[0], orgs[1 : WRITERS + 1]
    results: list[tuple[str, str, str]] = []

    # -- appends through the API
    baseline = concurrently(APPENDS, lambda c, i: c.get("/v1/me", headers=user_headers), url)
    one = concurrently(
        APPENDS,
        lambda c, i: c.post(
            "/v1/audit-logs", json=product_entry(i), headers={"Authorization": f"Bearer {one_key}"}
        ),
        url,
    )
    spread = concurrently(
        APPENDS,
        lambda c, i: c.post(
            "/v1/audit-logs",
            json=product_entry(i),
            headers={"Authorization": f"Bearer {many[i % WRITERS][1]}"},
        ),
        url,
    )
    # The same server's single-event ingestion, same clients and concurrency: the ratio.
    events = concurrently(
        APPENDS,
        lambda c, i: c.post(
            "/v1/events",
            json={"event": "bench.audit_baseline", "user_id": f"u{i}", "message_id": f"audit-bench-{i}"},
            headers={"Authorization": f"Bearer {one_key}"},
        ),
        url,
    )
    with httpx.Client(base_url=url, headers=user_headers, timeout=600) as client:
        for org, _ in orgs[: WRITERS + 1]:
            report = client.get(f"/v1/orgs/{org}/audit-logs/verify").json()
            if not report["ok"]:
                raise RuntimeError(f"chain {org} broken after the appends: {report}")
    results.append(
        (
            "appends/s, one org (every append queues on its chain)",
            f"{one:,.0f}",
            f"single events {events:,.0f}/s, ratio {one / events:.2f}; GET /v1/me {baseline:,.0f}/s",
        )
    )
    results.append(
        (
            f"appends/s, spread over {WRITERS} orgs",
            f"{spread:,.0f}",
            f"single events {events:,.0f}/s, ratio {spread / events:.2f}",
        )
    )
    say(f"  appends: one org {one:,.0f}/s, {WRITERS} orgs {spread:,.0f}/s; single events {events:,.0f}/s")
    batch = batch_figures(url, one_key, server.pid, database_url)
    results.extend(batch.lines())
    say(f"  batch: {batch.audit_rate:,.0f} entries/s into one org; events batch {batch.events_rate:,.0f}/s")
    with httpx.Client(base_url=url, headers=user_headers, timeout=600) as client:
        report = client.get(f"/v1/orgs/{orgs[0][0]}/audit-logs/verify").json()
        if not report["ok"]:
            raise RuntimeError(f"chain {orgs[0][0]} broken after the batches: {report}")

    # -- one million entries
    big = orgs[-1][0]  # its own org: the appends above do not touch it
    began = time.perf_counter()
    hash_rate = bulk_load(database_url, big, ENTRIES)
    loaded = time.perf_counter() - began
    say(f"  loaded {ENTRIES:,} entries by COPY in {loaded:.1f}s (Python hashing alone {hash_rate:,.0f}/s)")
    with psycopg.connect(database_url) as conn:
        total = conn.execute("SELECT count(*) FROM audit_log WHERE chain_key = %s", [big]).fetchone()[0]  # type: ignore[index]
    copy_rate = copy_out_rate(database_url, big, total)

    with (
        httpx.Client(base_url=url, headers=user_headers, timeout=3600) as client,
        PeakRss(server.pid) as rss,
        server_cpu(server.pid) as cpu,
    ):
        began = time.perf_counter()
        report = client.get(f"/v1/orgs/{big}/audit-logs/verify").json()
        verify_rate = total / (time.perf_counter() - began)
    verify_cpu = cpu.taken["server"] / total * 1e6
    hash_cpu, hash_after = hashing_alone(big)
    if not report["ok"] or report["entries_checked"] != total:
        raise RuntimeError(f"the bulk chain does not verify: {report}")
    results.append((f"verify, entries/s over {total:,} (API)", f"{verify_rate:,.0f}",
                    f"COPY TO STDOUT {copy_rate:,.0f} rows/s; hashing alone {hash_rate:,.0f}/s,"
                    f" ratio {verify_rate / hash_rate:.2f}; right after {hash_after:,.0f}/s,"
                    f" ratio {verify_rate / hash_after:.2f}"))  # fmt: skip
    cpu_ratio = hash_cpu / verify_cpu
    results.append(("  server CPU per verified entry", f"{verify_cpu:.2f} us",
                    f"hashing alone {hash_cpu:.2f} us CPU per entry, ratio {cpu_ratio:.2f}"))  # fmt: skip
    say(f"  verify: {verify_rate:,.0f} entries/s (server peak RSS {rss.peak_mb:.0f} MB)")

    idle = psutil.Process(server.pid).memory_info().rss / 2**20
    with httpx.Client(base_url=url, headers=user_headers, timeout=3600) as client, PeakRss(server.pid) as rss:
        began = time.perf_counter()
        size = lines = 0
        with client.stream(
            "GET", f"/v1/orgs/{big}/audit-logs/export", params={"format": "jsonl"}
        ) as response:
            for piece in response.iter_bytes():
                size += len(piece)
                lines += piece.count(b"\n")
        http_rate = lines / (time.perf_counter() - began)
    api_peak = rss.peak_mb
    if lines != total:
        raise RuntimeError(f"the export held {lines} lines, not {total}")
    results.append((f"export jsonl via API, entries/s ({size / 2**20:,.0f} MB)", f"{http_rate:,.0f}",
                    f"COPY TO STDOUT {copy_rate:,.0f} rows/s"))  # fmt: skip
    results.append(
        ("  server peak RSS during the export", f"{api_peak:,.0f} MB", f"idle before it {idle:,.0f} MB")
    )
    say(f"  export via API: {http_rate:,.0f} entries/s, server peak RSS {api_peak:.0f} MB")

    out = tmp / "export.jsonl"
    env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(tmp)}
    began = time.perf_counter()
    command = [KEEL, "audit", "export", "--org", big, "--format", "jsonl", "--out", str(out)]
    cli = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with PeakRss(cli.pid) as rss:
        code = cli.wait()
    cli_rate = total / (time.perf_counter() - began)
    if code != 0:
        raise RuntimeError(f"keel audit export exited {code}")
    results.append(
        (
            "export jsonl via `keel audit export`, entries/s",
            f"{cli_rate:,.0f}",
            f"COPY TO STDOUT {copy_rate:,.0f} rows/s",
        )
    )
    results.append(("  CLI peak RSS", f"{rss.peak_mb:,.0f} MB", f"limit {RSS_LIMIT_MB} MB"))
    say(f"  export via CLI: {cli_rate:,.0f} entries/s, peak RSS {rss.peak_mb:.0f} MB")

    results.extend(stream_delivery(database_url, orgs[-1][0], tmp))

    width = max(len(r[0]) for r in results)
    say("")
    say(f"{'figure'.ljust(width)}  {'value':>12}  baseline (same run)")
    for name, value, base in results:
        say(f"{name.ljust(width)}  {value:>12}  {base}")
    over = [name for name, peak in (("API", api_peak), ("CLI", rss.peak_mb)) if peak >= RSS_LIMIT_MB]
    if over:
        say(f"FAIL: peak RSS of {', '.join(over)} export at or over {RSS_LIMIT_MB} MB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
