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

What was found, in three passes (py-spy, `strace -c`, `perf stat` on the server, CPU of Postgres's
backends; this machine is a Firecracker VM with nested virtualization, 2 cores shared by several
sessions, where every system call that wakes a peer is dear):

First pass (main at f55b447): server CPU per request /health 0.2 ms, /v1/me 1.8, the organization
2.6, its members 3.2. 38% of an org read's samples sent `BEGIN`/`COMMIT`/`ROLLBACK`: the guard and
the handler each opened a session, six round trips for one organization, the ORM most of the
rest. Since then the guard and the three routes read through `api/db/reads.py` (Core statements
compiled once, read-only autocommit connections, server-prepared statements: pg_stat_statements
shows one `SELECT` a request and no `BEGIN`/`COMMIT`; `EXPLAIN (ANALYZE, BUFFERS)` of the members
page: 2 shared hits, 0.04 ms) and an active member's grant is cached for 2 s.

Second pass (main at 0950ec8): what separates these routes from /health is system calls that wake
a peer: the answer's writes (uvicorn writes head and body apart: shared by /health) and the one
`sendto` to Postgres (10-26% of an org read's samples); `strace -c` per read: 1 sendto, 1
recvfrom, ~6 epoll_ctl, 1 ioctl (psycopg's wait adds the socket's reader and removes it at every
wait; libuv checks a new poll handle and sets O_NONBLOCK), ~25 us at 3.5 us an epoll_ctl. The
page's Python work is small (22 rows converted 7 us, the page built 3 us, encoded 5 us); parsing
44 text `timestamptz` ~15 us; asyncpg no cheaper than psycopg for one prepared `SELECT`. Pool
`getconn`/`putconn` and converting only the enum columns took ~10 us off a read.

Third pass (main at 963ab4a, branch i20-reads4; micro-benchmarks of the reader alone in a uvloop
process, 4 tasks; the app called in-process as uvicorn calls it, no client sockets, py-spy `record
--rate 400 --format raw` on it; this bench):
- psycopg's wait, replaced for the read pool (`api/db/reads.py` `ReadConnection`): the socket is
  registered with the loop at its first wait and stays so; a wait is a future its reader callback
  resolves. Reader alone, CPU per read (medians of 5 rounds, four runs each way taking turns):
  organization 65-69 us -> 47-49, members page 98-117 -> 82-90. The hazard is fd reuse: a
  registration left behind for a socket libpq closed would keep libuv from ever polling the next
  socket given that number (tests/test_reads.py proves a socket at the old number is polled after
  a close and after a connection lost mid-read, and that an idle connection the server closed is
  dropped from the loop's epoll set; each test fails with the matching drop removed). `strace -c`
  of that process over 10,000 reads: main 6.0 epoll_ctl (half failing), 1.0 ioctl and 0.31
  io_uring_enter a read beside its sendto and recvfrom (10.7 system calls a read); now 0.014
  epoll_ctl and no ioctl (3.4 a read: sendto, recvfrom, getpid, 0.4 epoll_pwait).
- Binary results: members page read and built, medians 137-139 -> 119-131 us (timestamps and
  uuids from their binary form in C; Postgres's binary send functions are cheaper than
  `timestamptz_out` too); the organization's one row: no difference. Same JSON, to the byte (test). The enum
  columns (role, status) are converted by a dict lookup in a table of SQLAlchemy's own
  processor's answers: 22 rows 6.8 -> 3.9 us (after the figures below were taken).
- Dependencies: the three routes took `reader` (depending on `principal`, to stay out of
  Litestar's task group) and `principal`, two `Provide` layers each with a signature model and a
  call; now one, `ReadContext` (principal and reader, from the request alone). A cached
  membership grant is returned without building the lookup closure or awaiting it.
- The send: in the in-process app (no client sockets), 50-68% of an org or members request's
  samples are in psycopg's `_send_query_prepared`, i.e. the `sendto` that wakes Postgres's
  backend; with both cores busy the woken backend often runs at once on the sender's core
  (wake-up preemption), so the sender stalls for the query's execution. This is what is left:
  one round trip a request, and Postgres's own CPU (0.07-0.19 ms a request) competes with the
  server for the 2 cores, which /health does not. Measured and not taken: a pipeline of the
  reads that coincide (psycopg pipeline mode, batches of 4 in the micro-benchmark) cost 56-69 us
  a read against 49-50 for one read at a time: its Python machinery outweighs the wake-ups saved.
- Not changed, for the ratio's sake or the contract's: one write for the answer's head and body
  would speed /health as much as these routes; answers cached across requests would break
  read-your-writes (the 2 s grant cache is for access only, documented); a `Response` of
  pre-encoded bytes would save an encode of ~5 us and lose the answer's schema in /schema.

Figures of the third pass (`--no-single`, 1 Dec 2026 20:49-21:15 UTC, load average 5-10 from other
sessions; main 963ab4a checked out under /tmp and this branch run with the same venv and this
bench file, taking turns, six runs each): the rate ratio to /health and, in brackets, the server's
CPU per request as a multiple of /health's (the steadier figure).

| route | main: six runs, median | branch: six runs, median |
|---|---|---|
| GET /v1/me | .39 .44 .56 .38 .54 .32: 0.42 (2.35x) | .46 .49 .51 .57 .46 .55: 0.50 (2.15x) |
| GET /v1/orgs/{org_id} | .39 .40 .52 .23 .47 .39: 0.40 (2.5x) | .43 .56 .55 .52 .41 .56: 0.54 (2.3x) |
| GET …/members | .35 .33 .43 .30 .43 .28: 0.34 (3.1x) | .43 .33 .42 .48 .37 .38: 0.40 (2.85x) |

/health ran at 918-3,054 req/s in these runs. The first three branch runs predate binary results.

Then the machine went quiet (load average 1-2.5, 21:21-21:24 UTC), three more pairs with the final
code (enum lookup included): rate ratios main .47 .49 .51 / .45 .50 .46 / .38 .38 .33, branch
.55 .51 .49 / .49 .45 .45 / .42 .38 .39 (/v1/me / organization / members page; /health 3,486-6,248
req/s); server CPU per request main 0.40 0.37 0.41 / 0.43 0.40 0.45 / 0.49 0.50 0.60 ms, branch
0.29 0.34 0.31 / 0.32 0.38 0.34 / 0.36 0.45 0.40 ms (2.1-2.2x, 2.2-2.4x, 2.6-3.1x /health's on
main; 1.8-2.0x, 2.0-2.2x, 2.2-2.6x on the branch), Postgres's 0.09-0.14 -> 0.06-0.12 ms.

So the server's CPU per request of the three routes is down 20-25% on a quiet machine (about a
third of what separated each from /health's), and the rate ratios follow under load (medians
0.42 -> 0.50, 0.40 -> 0.54, 0.34 -> 0.40); on a quiet machine main was already near 0.5 for the
first two and the rates moved less than the CPU (/health itself did not always saturate the
server there: the client and Postgres share the second core). /v1/me and the organization are at
the target at the median under load, not in every run; the members page is not (0.38-0.42):
beside the organization it parses 21 rows, builds and encodes the page, and Postgres spends
0.08-0.22 ms a request on it, CPU taken from the same two cores.
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
