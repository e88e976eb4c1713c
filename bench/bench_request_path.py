"""The request path (issue 20, rows 1 and 3), each figure beside `/health` measured in the same run.

Run by `make bench`. One `keel serve` process (one worker, logging as deployed: INFO, one JSON line
per request) against a private Postgres *server* reached over TCP on 127.0.0.1 (`harness.tcp_postgres`,
stock settings, a port chosen at run time), as a deployment reaches an external server.

Set-up, as a user gets there: the owner and the member are created with `keel users create`; the
owner creates the organization and invites the member and 19 others over HTTP; the member accepts
the invitation and creates a user token of their own (`POST /v1/me/tokens`): the token measured.

1. Authenticated reads with the member's token, 4 keep-alive clients, closed loop:
   `GET /v1/me`, `GET /v1/orgs/{org_id}` and `GET /v1/orgs/{org_id}/members` (a page of 21), and
   `GET /v1/me` with an org ingest key (it reads nothing: what authentication alone costs), taking
   turns with `GET /health` in slices of `--requests` requests for `--rounds` cycles on the same
   connections, so that a neighbour's burst weighs on every route alike. Each route's rate is its
   requests over the time all its slices took, printed beside /health's (target: >= 0.5 of
   /health each), with the spread of the slice-by-slice ratios and the CPU per request.
2. Single events (`POST /v1/events` with an org ingest key): an open-loop, fixed-rate load
   generator (latency counted from each request's scheduled time, so a queue shows) steps the
   offered rate (doubling from 250 req/s, or halving, until a step fails where the last passed,
   then halving the gap) and reports the highest offered rate whose `--step-seconds` step had
   p99 < 50 ms and kept up (>= 95% of the offered rate achieved, no error); the same search on
   `/health` is the baseline (target: >= 0.5 of /health's).

Beside each read figure: CPU milliseconds per request of the server process and Postgres's
backends. Options: `--profile DIR` records py-spy's raw (collapsed) stacks of the server for each
read route (py-spy on PATH); with `KEEL_BENCH_PG_BIN` naming a Postgres that has
`pg_stat_statements` (Debian's `/usr/lib/postgresql/15/bin`) `--statements` prints the statements
each route ran.

What was found (py-spy and `strace -c` on the server, CPU of Postgres's backends;
this machine is a Firecracker VM with nested virtualization, 2 cores shared by 8 sessions, where
every system call is dear):
- Before (main at f55b447), CPU per request in the server: /health 0.2 ms, /v1/me 1.8 ms,
  /v1/orgs/{org_id} 2.6 ms, its members 3.2 ms. py-spy: 38% of the samples of an org read in
  psycopg's `_exec_command` sending `BEGIN`, `COMMIT` and `ROLLBACK`: the guard opened a session
  of its own (`BEGIN`, `SELECT`, `ROLLBACK`) and the handler another (`BEGIN`, `SELECT`,
  `COMMIT`): six round trips for one organization; SQLAlchemy's ORM (`Session.execute`, identity
  map, `session.get`) most of the rest. A single `SELECT` through SQLAlchemy Core on an
  autocommit `AsyncEngine` cost 680 us of client CPU, through psycopg with a server-prepared
  statement 65-90 us (a micro-benchmark against the same server).
- Now: the guard and the three routes read through `api/db/reads.py` (Core statements compiled
  once, read-only autocommit connections, prepared statements) and an active member's grant is
  cached for 2 s (as flag evaluation's was): a member's org read is one `SELECT`, one round trip
  (`tests/test_safety_nets.py` counts the membership reads of a request). pg_stat_statements
  (`--statements` on Debian's Postgres 15) over 1,200 requests of each route: 1,200 calls of the
  route's one `SELECT` (mean execution 28 us for /v1/me, 12 us for the organization, 55 us for the
  members page), 2 membership lookups and 2 token lookups (the 2 s caches refilling), no
  `BEGIN`/`COMMIT` on the request path. `EXPLAIN (ANALYZE, BUFFERS)` of the members page: 2 shared
  buffer hits, 0.04 ms. Postgres's share is small: 0.07-0.17 ms of backend CPU a request against
  0.4-0.7 ms in the server, so what is left is the server's own work.
- strace -c per request: /health makes 3 writes (the answer's head and body: uvicorn writes them
  apart; the access log line), 1 read, 1 getrandom (the request id), 1 getpid. An authenticated
  route made 17 getpid: CPython 3.11's `get_running_loop` checks the pid, and Litestar resolves a
  route's independent dependencies in an anyio task group (a task each; ~40 us a request); the
  reader now depends on the principal, so it is awaited after it instead. Each read through
  psycopg costs 1 sendto, 1 recvfrom, ~6 epoll_ctl (uvloop registers and drops the socket at every
  wait, half the calls failing with EEXIST/ENOENT), ~1.5 epoll_pwait and an ioctl: most of what a
  read route costs beyond /health. asyncpg, whose protocol keeps the socket registered, spent
  21 us of client CPU per prepared `SELECT` against psycopg's 65 us in the same micro-benchmark:
  the next step if these routes must go further (a second driver, not taken here).
- Still shared by every route, /health included: uvicorn's two writes per answer; and most routes
  take `db`, `principal` and `ctx`, three independent dependencies, so they pay the task group.

Figures (this bench, 1 Dec 2026, load average 17-21 on the 2 cores: rates swing by 10x from one
slice to the next, so the CPU per request, the steadier figure, is given too):

| route | before (f55b447): rate ratio, server CPU | after: rate ratio, server CPU |
|---|---|---|
| /health | 590 req/s, 0.19 ms | 2,282 req/s, 0.14 ms |
| GET /v1/me | 0.05, 2.98 ms (15.7x /health's) | 0.33 (slice median 0.40), 0.37 ms (2.7x) |
| GET /v1/orgs/{org_id} | 0.04, 3.53 ms (18.6x) | 0.23 (0.28), 0.42 ms (3.0x) |
| GET /v1/orgs/{org_id}/members | 0.03, 4.61 ms (24.3x) | 0.38 (0.27), 0.45 ms (3.2x) |
| single events (p99 < 50 ms) | none passed 31 req/s, nor /health | /health 593; events none (31: 62 ms) |

Quieter runs of the same code in between gave 0.41-0.45, 0.38-0.46 and 0.34-0.38 for the three
routes; the `--statements` run (Debian's Postgres 15, one cycle) 0.53, 0.44 and 0.35. The target
(>= 0.5) is not reached here. The single-event path was not profiled: its handler takes no
dependency but the principal and answers after the ingest store's commit (`api/events/store.py`,
not part of this change); where its p99 went on the loaded machine is not established here.

Second pass (1 Dec 2026, 17:45-18:30 UTC, main at 0950ec8; py-spy 0.4.3 `record --rate 400 --format
raw` on the one worker over 6,000 requests of each route, 4 clients; `strace -c` and `perf stat`
over 2,000-4,000; micro-benchmarks of the reader alone in one uvloop process, 4 tasks):
- Server CPU per request under the profiler: /health 0.133 ms, /v1/me with an ingest key
  0.20 ms (authentication, dependencies, routing: +0.07), the member's /v1/me 0.35, the
  organization 0.39, the members page 0.48. Context switches per request (perf stat) are
  1.5-1.8 on every route alike: the database routes do not sleep more, they spend more.
- The largest frames are system calls that wake a peer. The answer's writes
  (`RequestResponseCycle.send`, uvicorn writes the head and the body apart) are 38-47% of the
  samples of /health and of the ingest-key /v1/me and 18-33% of the database routes;
  psycopg's `_send_query_prepared` (the one `sendto` to Postgres) 10-26%. A send to a sleeping
  process wakes it from the sender's CPU; on this nested VM cProfile clocks that send at ~83 us
  of wall time, and a differential profile (organization minus ingest-key /v1/me, us a
  request) puts +101 in the read (+72 of it the send) and +60 in the answer's writes, whose
  client is more often asleep by then.
- strace -c per database read: 1 sendto, 1 recvfrom, ~6 epoll_ctl, 1 ioctl, 0.5 io_uring_enter,
  1 getpid: psycopg's `wait_async` adds and removes the socket's reader at every wait (libuv
  checks a new poll handle with an epoll_ctl pair and sets O_NONBLOCK: the ioctl). epoll_ctl
  costs 3.5 us here, so ~25 us a read; keeping the socket registered would mean replacing
  psycopg's wait with one of our own (fd reuse after a close is the hazard), not done.
- The reader alone: a prepared one-row `SELECT` through psycopg 43-47 us of CPU, through asyncpg
  45-47 us (its protocol keeps the socket registered, yet no cheaper now: a second driver would
  buy nothing). `Reader.first` of the organization: 62-78 us on main, 54-65 us now;
  `Reader.all` of the members page 119-122 us on main, 98-114 us now. What changed:
  `getconn`/`putconn` instead of `pool.connection()`, whose context also entered the
  connection's own (a commit: a lock and a status check, for a transaction autocommit never
  opened), and rows converted only in the columns that need it (the enums stored as text).
- The members page's own Python work is small: converting 22 rows 7 us, building the page 3 us,
  msgspec's encoding 5 us. Its fetch costs 63-80 us against 42-47 us for one row: parsing 44
  `timestamptz` values is ~15 us of it (selecting them as text saves that, but would change the
  answer's format), the 66 uuids nothing measurable.
- Not changed, for the ratio's sake or the contract's: one write for the answer's head and body
  (one wake-up of the client fewer) would speed /health as much as these routes, lowering the
  ratio; caching the answers themselves would let one process serve an organization another
  just changed (read-your-writes across workers), which the 2 s grant cache does for access
  only, as documented.

| route | main (0950ec8): rate ratio, server CPU | this branch: rate ratio, server CPU |
|---|---|---|
| /health | 901, 1,466, 1,259 req/s; 0.18, 0.18, 0.17 ms | 1,254, 1,324, 1,141 req/s; 0.18, 0.16, 0.19 ms |
| GET /v1/me | 0.52, 0.40, 0.46; 0.41, 0.42, 0.39 ms | 0.55, 0.56, 0.51; 0.37, 0.36, 0.40 ms |
| GET /v1/orgs/{org_id} | 0.53, 0.31, 0.47; 0.45, 0.47, 0.43 ms | 0.43, 0.41, 0.47; 0.44, 0.41, 0.42 ms |
| GET …/{org_id}/members | 0.39, 0.27, 0.37; 0.57, 0.55, 0.51 ms | 0.41, 0.40, 0.30; 0.48, 0.48, 0.51 ms |

Three runs each, taking turns (main, branch, main, branch, ...: 18:08-18:32 UTC, load average
6-13 from other sessions; `--no-single`; the main checkout ran this same bench file). Slice-by-
slice ratios spread 0.13-1.83 within one run, so the rate ratios say little. The server's CPU per
request (medians): /v1/me 0.41 -> 0.37 ms, the organization 0.45 -> 0.42, the members page
0.55 -> 0.48; the third pair alone shows no difference at all, so the reader's ~10 us a read
(micro-benchmark above) is at the edge of what this machine can show end to end. Only /v1/me
is at the target (median ratio 0.55); the organization (0.43) and the members page (0.40) are
not, and what separates them from /health is mostly the two wake-ups above (the query's send,
and a client that fell asleep meanwhile), not Python work that is left to cut.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import statistics
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import psycopg
from harness import (
    KEEL,
    CpuMeter,
    HttpLoad,
    percentile,
    postmaster,
    row,
    run,
    served_api,
    tcp_postgres,
)

from api.db.embedded import app_url
from api.db.engine import libpq_url

CLIENTS = 4
REQUESTS = 400  # per route and slice
ROUNDS = 12  # cycles of one slice per route
WARMUP = 300
MEMBERS = 20  # invited besides the member measured (and the owner)
READ_TARGET = 0.5
#: The routes with a target (with the member's token).
TARGETS = ("GET /v1/me", "GET /v1/orgs/{org_id}", "GET /v1/orgs/{org_id}/members")
SINGLE_TARGET = 0.5
P99_LIMIT_MS = 50.0
STEP_SECONDS = 3.0
FIRST_RATE = 250
#: The search stops refining once the gap between a passing and a failing rate is this narrow.
RESOLUTION = 0.1
#: Open-loop connections: enough that a slow answer does not hold back the schedule.
OPEN_LOOP_CONNECTIONS = 64
MAX_RATE = 40_000
MIN_RATE = 16


def keel_users_create(url: str, email: str) -> dict[str, str]:
    """What an operator runs: `keel users create --email E --json`."""
    out = subprocess.run(
        [KEEL, "users", "create", "--email", email, "--json"],
        env={**os.environ, "KEEL_DATABASE_URL": app_url(url), "KEEL_LOG_LEVEL": "WARNING"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    created: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return created


def set_up(url: str, api: str) -> tuple[str, str, str]:
    """(org id, the member's own user token, an org ingest key), made as users make them."""
    tag = uuid.uuid4().hex[:8]
    owner = keel_users_create(url, f"owner-{tag}@bench.example")
    member = keel_users_create(url, f"member-{tag}@bench.example")
    as_owner = {"Authorization": f"Bearer {owner['token']}"}
    as_member = {"Authorization": f"Bearer {member['token']}"}
    with httpx.Client(base_url=api, timeout=30) as http:

        def call(method: str, path: str, headers: dict[str, str], body: object = None) -> dict:
            answer = http.request(method, path, headers=headers, json=body)
            assert answer.status_code in (200, 201), f"{method} {path}: {answer.status_code} {answer.text}"
            return answer.json() if answer.content else {}

        org = call("POST", "/v1/orgs", as_owner, {"name": "Bench Co", "slug": f"bench-{tag}"})
        org_id = org["id"]
        members = f"/v1/orgs/{org_id}/members"
        call("POST", members, as_owner, {"email": f"member-{tag}@bench.example", "role": "member"})
        for i in range(MEMBERS):
            call("POST", members, as_owner, {"email": f"m{i}-{tag}@bench.example", "role": "viewer"})
        call("POST", f"{members}/accept", as_member)
        token = call("POST", "/v1/me/tokens", as_member, {"name": "laptop"})["token"]
        key = call("POST", f"/v1/orgs/{org_id}/ingest-keys", as_owner, {"name": "bench"})["token"]
    return org_id, token, key


def profile(server: psutil.Process, out: Path | None, name: str) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH")
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "--pid", str(server.pid), "--rate", "400", "--nonblocking",
         "--format", "raw", "--output", str(out / f"{name}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
        spy.wait(30)


def statements(url: str) -> Callable[[str], None] | None:
    """With pg_stat_statements loaded: a function printing (and then resetting) what ran."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        loaded = conn.execute("SHOW shared_preload_libraries").fetchone()
        if not loaded or "pg_stat_statements" not in loaded[0]:
            return None
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")

    def report(label: str) -> None:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric * 1000, 1),"
                " left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements"
                " WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = 'keel_app')"
                " ORDER BY calls DESC LIMIT 8"
            ).fetchall()
            print(f"    statements of {label} (calls, total ms, mean us, query):")
            for calls, total, mean, query in rows:
                print(f"      {calls:>7} {total:>9} {mean:>8}  {query}")
            conn.execute("SELECT pg_stat_statements_reset()")

    return report


async def read_slices(
    api: str,
    routes: dict[str, bytes],
    cycles: int,
    count: int,
    server: psutil.Process,
    postgres: psutil.Process,
) -> dict[str, tuple[list[float], float, float]]:
    """Each route in turn, ``count`` requests at a time, for ``cycles`` cycles, on the same keep-alive
    connections: a neighbour's burst then weighs on every route alike. Per route: every slice's
    rate, and the server's and Postgres's CPU seconds over all its slices."""
    slices: dict[str, list[float]] = {name: [] for name in routes}
    cpu = {name: [0.0, 0.0] for name in routes}
    async with HttpLoad(api, CLIENTS) as load:
        for request in routes.values():
            _, statuses = await load.closed_loop([request] * WARMUP)
            assert set(statuses) == {200}, f"statuses {set(statuses)}"
        for _ in range(cycles):
            for name, request in routes.items():
                server_before, postgres_before = (
                    CpuMeter.tree_seconds(server),
                    CpuMeter.tree_seconds(postgres),
                )
                rate, statuses = await load.closed_loop([request] * count)
                cpu[name][0] += CpuMeter.tree_seconds(server) - server_before
                cpu[name][1] += CpuMeter.tree_seconds(postgres) - postgres_before
                assert set(statuses) == {200}, f"{name}: statuses {set(statuses)}"
                slices[name].append(rate)
    return {name: (slices[name], cpu[name][0], cpu[name][1]) for name in routes}


async def one_slice(api: str, request: bytes, count: int) -> None:
    async with HttpLoad(api, CLIENTS) as load:
        await load.closed_loop([request] * count)


def reads(
    args: argparse.Namespace, api: str, server: psutil.Process, url: str, org_id: str, token: str, key: str
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    loader = HttpLoad(api, CLIENTS)
    routes = {
        "GET /health": loader.build("GET", "/health"),
        "GET /v1/me": loader.build("GET", "/v1/me", headers=auth),
        "GET /v1/me (ingest key: reads nothing)": loader.build(
            "GET", "/v1/me", headers={"Authorization": f"Bearer {key}"}
        ),
        "GET /v1/orgs/{org_id}": loader.build("GET", f"/v1/orgs/{org_id}", headers=auth),
        "GET /v1/orgs/{org_id}/members": loader.build("GET", f"/v1/orgs/{org_id}/members", headers=auth),
    }
    postgres = postmaster(url)
    measured = run(lambda: read_slices(api, routes, args.rounds, args.requests, server, postgres))
    total = args.rounds * args.requests

    def overall(name: str) -> float:  # requests over the time all of the route's slices took
        return len(measured[name][0]) * args.requests / sum(args.requests / r for r in measured[name][0])

    health, health_cpu = overall("GET /health"), measured["GET /health"][1] / total
    for name, (rates, server_cpu, postgres_cpu) in measured.items():
        rate = overall(name)
        ratios = [r / h for r, h in zip(rates, measured["GET /health"][0], strict=True)]
        spread = f"slice by slice {min(ratios):.2f}-{max(ratios):.2f}, median {statistics.median(ratios):.2f}"
        if name == "GET /health":
            note = "baseline"
        elif name in TARGETS:
            note = f"{rate / health:.2f} of /health (target >= {READ_TARGET}); {spread}"
        else:
            note = f"{rate / health:.2f} of /health (no target: what authentication costs); {spread}"
        row(f"{name} ({CLIENTS} clients)", f"{rate:,.0f} req/s", note)
        row(
            "  CPU per request:",
            "",
            f"server {server_cpu / total * 1e3:.2f} ms ({server_cpu / total / health_cpu:.1f}x /health's),"
            f" postgres {postgres_cpu / total * 1e3:.2f} ms",
        )
    report = statements(url) if args.statements else None
    for name, request in routes.items():  # profiles and statements: one more slice of each route
        if args.profile is None and report is None:
            break
        spy = profile(
            server,
            args.profile,
            name.split(" ")[1].strip("/").replace("/", "_") + ("_key" if "(" in name else ""),
        )
        run(functools.partial(one_slice, api, request, args.requests * 4))
        stop_profile(spy)
        if report is not None:
            report(name)


def step(api: str, make: Callable[[int], bytes], rate: int, seconds: float) -> tuple[bool, float, float, int]:
    """One step of the open-loop load: (passed, achieved req/s, p99 ms, errors)."""

    async def go() -> tuple[float, list[float], list[int]]:
        async with HttpLoad(api, OPEN_LOOP_CONNECTIONS) as load:
            requests = [make(i) for i in range(int(rate * seconds))]
            return await load.open_loop(requests, rate)

    gc.collect()
    achieved, latencies, statuses = run(go)
    p99 = percentile(latencies, 99)
    errors = sum(s not in (200, 202) for s in statuses)
    return p99 < P99_LIMIT_MS and errors == 0 and achieved >= 0.95 * rate, achieved, p99, errors


def highest_rate(api: str, make: Callable[[int], bytes], seconds: float, label: str) -> int:
    """The highest offered rate that passes a step: doubling, then bisecting to RESOLUTION."""
    passing, failing = 0, 0
    rate = FIRST_RATE
    trail = []
    while MIN_RATE <= rate <= MAX_RATE:  # double from FIRST_RATE until a step fails (halve if it does)
        ok, _, p99, _ = step(api, make, rate, seconds)
        trail.append(f"{rate:,}{'' if ok else ' x'} (p99 {p99:.0f})")
        if ok:
            passing, rate = rate, rate * 2
            if failing:
                break
        else:
            failing, rate = rate, rate // 2
            if passing:
                break
    while failing and passing and (failing - passing) / failing > RESOLUTION:
        rate = (passing + failing) // 2
        ok, _achieved, p99, _errors = step(api, make, rate, seconds)
        trail.append(f"{rate:,}{'' if ok else ' x'} (p99 {p99:.0f})")
        if ok:
            passing = rate
        else:
            failing = rate
    row(f"  {label} steps (req/s offered, p99 ms; x failed):", "", ", ".join(trail))
    return passing


def single_events(args: argparse.Namespace, api: str, server: psutil.Process, url: str, key: str) -> None:
    loader = HttpLoad(api, 1)
    health = loader.build("GET", "/health")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))

    def event(_: int) -> bytes:
        body = {"event": "button.clicked", "user_id": "u1", "message_id": f"single-{run_id}-{next(counter)}"}
        return loader.build("POST", "/v1/events", json.dumps(body).encode(), headers)

    health_rate = highest_rate(api, lambda _: health, args.step_seconds, "/health")
    events_rate = highest_rate(api, event, args.step_seconds, "POST /v1/events")
    row(
        f"GET /health: highest offered rate with p99 < {P99_LIMIT_MS:.0f} ms",
        f"{health_rate:,} req/s",
        "baseline",
    )
    ratio = events_rate / health_rate if health_rate else 0.0
    row(
        f"POST /v1/events (single): highest rate with p99 < {P99_LIMIT_MS:.0f} ms",
        f"{events_rate:,} req/s",
        f"{ratio:.2f} of /health (target >= {SINGLE_TARGET})",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="cycles of one slice per route")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="per route and slice")
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS, help="each open-loop step")
    parser.add_argument("--no-reads", action="store_true", help="skip the read routes")
    parser.add_argument("--no-single", action="store_true", help="skip the single-event search")
    parser.add_argument(
        "--profile", type=Path, help="write a py-spy profile of the server per read route here"
    )
    parser.add_argument("--statements", action="store_true", help="print pg_stat_statements per read route")
    args = parser.parse_args()
    print("bench_request_path: the request path, one server process, Postgres over TCP")
    extra = {"shared_preload_libraries": "pg_stat_statements"} if args.statements else {}
    with tcp_postgres(**extra) as url, served_api(url, workers=1, KEEL_LOG_LEVEL="INFO") as (api, server):
        org_id, token, key = set_up(url, api)
        if not args.no_reads:
            reads(args, api, server, url, org_id, token, key)
        if not args.no_single:
            single_events(args, api, server, url, key)


if __name__ == "__main__":
    main()
