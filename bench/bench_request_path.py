"""The request path (issue 20, rows 1 and 3), each figure beside `/health` measured in the same run.

Run by `make bench`. One `keel serve` process (one worker, logging as deployed: INFO, one JSON line
per request) against a private Postgres *server* reached over TCP on 127.0.0.1 (`harness.tcp_postgres`,
stock settings, a port chosen at run time), as a deployment reaches an external server.

Set-up, as a user gets there: the owner and the member are created with `keel users create`; the
owner creates the organization and invites the member and 19 others over HTTP; the member accepts
the invitation and creates a user token of their own (`POST /v1/me/tokens`): the token measured.
Beside them the database holds `NEIGHBOURS` (200) other organizations of 21 members each, written
straight to the tables, as a database of many tenants does.

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

What was found, in four passes (py-spy, `strace -c`, `perf stat` on the server, CPU of Postgres's
backends; this machine is a Firecracker VM with nested virtualization, 2 cores shared by several
sessions, where every system call that wakes a peer is dear):

First pass (main at f55b447): server CPU per request /health 0.2 ms, /v1/me 1.8, the organization
2.6, its members 3.2; 38% of an org read's samples sent `BEGIN`/`COMMIT`/`ROLLBACK` (two sessions,
six round trips), the ORM most of the rest. Since then the guard and the three routes read through
`api/db/reads.py` (Core statements compiled once, read-only autocommit connections,
server-prepared statements: one `SELECT` a request, no `BEGIN`/`COMMIT`) and an active member's
grant is cached for 2 s.

Second pass (main at 0950ec8): what separates these routes from /health is system calls that wake
a peer: the answer's writes (shared by /health) and the one `sendto` to Postgres; psycopg's wait
added and removed the socket from the loop at every read (~6 epoll_ctl and an ioctl). Pool
`getconn`/`putconn` and converting only the enum columns took ~10 us off a read.

Third pass (main at 963ab4a): `ReadConnection` keeps its socket registered with the loop (reader
alone: organization 65-69 -> 47-49 us of CPU a read; 10.7 -> 3.4 system calls a read; the fd-reuse
hazard is covered by tests/test_reads.py), binary results, one `ReadContext` dependency, the enum
columns converted by a table lookup. Measured and not taken: psycopg's pipeline mode (its Python
outweighed the wake-ups saved), one write for the answer's head and body (speeds /health alike),
answers cached across requests (read-your-writes), a `Response` of pre-encoded bytes (the schema
in /schema would go). Rate ratios then (medians of six runs under load): 0.50, 0.54, 0.40.

Fourth pass (main at c0b0c8c, branch i20-reads5). Measured: the app called in-process as uvicorn
calls it (no client sockets; CPU per request of the process, 4 tasks, medians of 5 rounds), py-spy
`record --rate 400 --format raw` of it per route, and the reader alone (the main and the branch
`Reader` in one process, taking turns):
- In-process, main, a quiet moment: /health 55 us, /v1/me with an ingest key (authentication
  alone) 83, /v1/me 201, the organization 187, the members page 248. Beside authentication every
  route pays one read; /v1/me and the organization cost the same (the org route's own work, the
  cached grant, the path's uuid, `read_access`, the `OrgOut`, is ~1-2% of its samples each), so
  what separates the org routes from /v1/me is nothing route-specific but the members page's rows.
- The read, in py-spy: 47% of an org request's samples, 28% in psycopg's `_send_query_prepared`
  (libpq's `PQsendQueryPrepared`: the `sendto` that wakes the backend, which on 2 busy cores
  often preempts the sender), the rest psycopg's cursor: the connection's lock twice, query
  conversion, prepare bookkeeping, result selection, the row maker. `ReadConnection.fetch` now
  sends the statement through libpq itself: SQLAlchemy compiles it with `$n` placeholders, psycopg's
  C Transformer dumps the values and names their types, the statement is prepared once per
  connection and parameter types (`pg_prepared_statements`: one entry per read, tested), each read
  one `PQsendQueryPrepared`, rows loaded in binary by the Transformer. Reader alone, CPU per read
  (medians of 7 rounds, load average ~8): organization 100 -> 56 us, members page 167 -> 119 us;
  a raw libpq floor (no pool, nothing converted) was 26 us for the organization.
- The members page's rows: loading 22 rows in binary took 69 us with the connection's zone
  `Etc/UTC` and 34 us with `UTC` (micro-benchmark, load ~7): psycopg gives `UTC` the fixed
  `datetime.timezone.utc` and any other name a `ZoneInfo`, whose conversion is per timestamp
  (44 of them). A read connection whose server zone is UTC by another name is set to `UTC`
  (`reads.utc_by_its_name`): the same instants, offsets and JSON (`Z`; tested); a zone with
  another offset is left alone. The rest of the page: enum conversion ~4-10 us, 21 `MemberOut`s
  ~6 us, encoding ~15 us (5,994 bytes); a generated row function saved ~2 us: not taken.
- `TtlCache.get_or_load` answers a hit itself (no task, no closure: the load takes its arguments)
  and is what the guard's `active_role` and flag evaluation's `org_access_cached` both call (the
  review finding; before, each checked `cache.memberships` by hand); a miss of the latter is now
  shared too, and a grant read across an invalidation is not kept (it was, by `put`).
- In-process before/after (main tree and branch taking turns, three pairs, load average 5-7, so
  the absolute figures are inflated and spread): CPU per request as a multiple of /health's in the
  same run, main / branch: /v1/me 4.6 4.2 3.9 / 2.7 4.2 3.3, organization 5.1 5.0 5.5 / 2.7 4.1
  3.3, members page 7.0 8.2 7.0 / 3.9 5.4 4.9.

Figures of the fourth pass over HTTP (`--no-single`, 1 Dec 2026 23:48 - 2 Dec 00:21 UTC, load
average 2.7-9 from other sessions; main c0b0c8c checked out under /tmp and this branch, the same
venv and this bench file, taking turns, six runs each): the rate ratio to /health and, in
brackets, the server's CPU per request as a multiple of /health's (the steadier figure).

| route | main: six runs, median | branch: six runs, median |
|---|---|---|
| GET /v1/me | .44 .56 .57 .52 .42 .42: 0.48 (2.2x) | .56 .52 .46 .47 .47 .45: 0.47 (2.05x) |
| GET /v1/orgs/{org_id} | .45 .49 .52 .46 .37 .48: 0.47 (2.3x) | .41 .50 .45 .55 .50 .45: 0.48 (2.15x) |
| GET …/members | .36 .38 .36 .46 .30 .37: 0.37 (2.8x) | .40 .39 .37 .47 .44 .32: 0.40 (2.5x) |

/health ran at 574-3,251 req/s (main) and 897-1,781 (branch) in these runs: the machine was
loaded throughout, and the server's CPU per request of /health itself moved 0.20-0.48 ms.

So: the read's client-side CPU is down by about 45 us (the reader alone, under load) and the
members page's rows by half again; over HTTP under this load the server's CPU per request moved
from 2.2 / 2.3 / 2.8x /health's to 2.05 / 2.15 / 2.5x (medians of six), and the rate ratios
within their spread (0.48 -> 0.47, 0.47 -> 0.48, 0.37 -> 0.40). At ~2x /health's CPU per request
what is left is the round trip (the `sendto` that wakes Postgres, and Postgres's own 0.1-0.25 ms
a request on the same two cores), which no route-specific change removes. /v1/me and the
organization are near 0.5 at the median, not in every run; the members page is not (0.40).

Single events (2 Dec 2026, quiet machine; a fixed open-loop rate with commits counted from
`pg_stat_database`): at 2,000 req/s a statement carried 2.3-3.6 requests and Postgres spent
250-276 us of CPU an event (a one-row statement costs its backend ~0.19 ms, a 64-row one 0.74 ms,
commits apart), the server 387-413 us, against /health's 200-230 us; at 2,500-3,000 req/s the
groups grow (5-9 a statement) and Postgres falls to 97-142 us. One shared writer instead of two
(`store.SHARED_WRITERS`) gives bigger groups (Postgres 102-217 us an event at 2,000/s) and, in seven
pairs of this search taking turns (two writers, then one; /health's own highest rate moved
3,500-6,800 req/s between runs, so only pairs compare), a higher ratio in each: 0.53 -> 0.60,
0.44 -> 0.53, 0.41 -> 0.45, 0.44 -> 0.46, 0.36 -> 0.44, and, fresh clones of main before and after,
0.36 -> 0.59, 0.33 -> 0.65. Taken: one writer (a single run of it still read 0.39). A 1-2 ms linger
before a small group is sent gave bigger groups too, but a worse p99 at 2,500/s: not taken.

Where an organization read's cost sits (2 Dec 2026, quiet machine, a scratch tree whose handler
answered a kept `OrgOut` after its first request, two pairs): `GET /v1/orgs/{org_id}` at 1.6-1.7x
/health's server CPU per request (0.57-0.60 of its rate), 1.4x without the handler's access check,
read and `OrgOut` (0.69-0.71). So the route's framework, authentication and membership guard are
1.4x (an ingest key's `/v1/me`, which reads nothing, 1.2-1.3x), the one read 0.2-0.3x; an answer
kept across requests would break read-your-writes between workers, so the read stays.

The members page's plan (2 Dec 2026): with only the unique (organization_id, user_id) index,
Postgres planned each page afresh or kept a plan that walked the primary key past other tenants'
rows, depending on the table's statistics; migration 0096's (organization_id, id) index makes the
page one range in one generic plan (its docstring has the plans and the backend's CPU a read). This
bench's database (one organization until then; now with `NEIGHBOURS`) got a cheap plan either
way: two pairs taking turns with main before 0096, the same bench file, members 0.49 / 0.51 before
and 0.51 / 0.55 after, Postgres 0.10-0.11 ms a request in all four; /v1/me 0.56 / 0.59 and 0.59 /
0.61, the organization 0.51 / 0.56 and 0.57 / 0.61.
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
#: Other tenants in the same database (organizations of MEMBERS + 1 members each): one organization
#: alone in its tables flatters every plan that filters by organization.
NEIGHBOURS = 200
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


def neighbours(url: str, orgs: int = NEIGHBOURS) -> None:
    """Other tenants, written straight to the tables as the owner (setup, not the path measured):
    ``orgs`` organizations of MEMBERS + 1 active members each, ids UUIDv7 as the app makes them,
    then ANALYZE, as autovacuum would have by now."""
    from api.db.base import new_id

    per_org = MEMBERS + 1
    with psycopg.connect(libpq_url(url), autocommit=True) as conn, conn.cursor() as cur:
        org_ids = [new_id() for _ in range(orgs)]
        cur.executemany(
            "INSERT INTO organizations (id, name, slug, status, lake_version)"
            " VALUES (%s, %s, %s, 'active', 0)",
            [(org, f"Neighbour {n}", f"neighbour-{n}") for n, org in enumerate(org_ids)],
        )
        user_ids = [new_id() for _ in range(orgs * per_org)]
        cur.executemany(
            "INSERT INTO users (id, email, status) VALUES (%s, %s, 'active')",
            [(user, f"{user.hex}@neighbour.example") for user in user_ids],
        )
        cur.executemany(
            "INSERT INTO memberships (id, organization_id, user_id, role, status)"
            " VALUES (%s, %s, %s, 'member', 'active')",
            [(new_id(), org_ids[n // per_org], user) for n, user in enumerate(user_ids)],
        )
        cur.execute("ANALYZE organizations, users, memberships")


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
        neighbours(url)
        if not args.no_reads:
            reads(args, api, server, url, org_id, token, key)
        if not args.no_single:
            single_events(args, api, server, url, key)


if __name__ == "__main__":
    main()
