"""Feature flags: in-process evaluations/s, and the evaluate endpoint's requests/s beside /health.

Run by `make bench`. Every figure is printed beside a baseline measured in the same run:
- in-process: one flag and 50 flags evaluated from a snapshot, beside the bare murmur3 hash
  rate (the floor of what one evaluation costs); and the `{key: bool}` map of 50 flags that the
  endpoint answers with (`FlagSnapshot.answers`: same precedence, no reasons); then the same map
  for 50 flags with two rules of three constraints each (plan, traits, seats; country, region,
  user id) over per-org facts, beside the rule-less map (target >= 0.5);
- over HTTP: one uvicorn process (a subprocess, on a free port chosen at run time) with
  its own embedded Postgres in a temporary directory, migrated and seeded with 50 flags; a few
  keep-alive clients send a fixed number of requests to `GET /v1/flags/evaluate` (an org ingest
  key, all 50 flags) and to `GET /health` on the same process, in alternating rounds; the ratio
  of the medians is the figure (target >= 0.6). `POST /ofrep/v1/evaluate/flags` (OFREP bulk, the
  same 50 flags, a targeting key) is measured in the same rounds: ratio to /health, target >= 0.7.
  `GET /v1/me` with the same key is measured in the same rounds: it authenticates exactly as
  evaluate does and reads nothing else for a key,
  but, like most routes, it takes a `db` session as a dependency; evaluate takes none, so
  evaluate / me above 1 is what that per-request session set-up costs. The server logs as
  deployed (INFO, one JSON line per request). Beside each wall-clock rate, the same rounds'
  rate per second of the server process's own CPU time (user + system, from /proc): on a shared
  machine the wall clock also counts other programs' turns, the server's CPU time much less so.

What the profiles showed (issue 17's two figures; cProfile of this program's loops and of the app
called in process over ASGI, and ``py-spy record`` of the uvicorn server under this program's load):
- in process, before: 0.42 (55,042 ruled maps/s beside 132,583 rule-less). cProfile put about 70 %
  of a ruled map in ``FlagSnapshot.answers``' own loop (unpacking the per-flag plan, the memo
  look-ups of each constraint, the branches), not in the checks or the hashes; with the ``Facts``
  built beforehand the ratio was still 0.49, so building them (a frozen dataclass:
  ``object.__setattr__`` per field) and their ``flat`` was the rest (2.1 of 18.5 us a map).
  Now ``api/flags/compiled.py`` writes the snapshot's answer map as one function when the snapshot
  is made (operators resolved, ``IN``/``NOT_IN`` a set look-up of a local, shared conditions and
  checks computed once per call, one hash per flag and stickiness, 0/100 % without a hash), and
  ``Facts`` is a plain slotted dataclass. The rule-less maps got faster too (same function), so
  the ratio moved less than the ruled rate. Before and after on the same loaded machine, one run
  after the other (the previous commit's api/ against this program): ruled 53,126 -> 96,921/s,
  rule-less 135,828 -> 165,997/s, ratio 0.39 -> 0.58.
- HTTP, before: OFREP bulk 0.65 of /health (5,309 beside 8,225/s), below GET /v1/flags/evaluate
  (0.71) although its answer was cached. In-process ASGI timing (no network) put the bulk route at
  149 us a request beside 81 for /health and 136 for evaluate; cProfile showed the cache hit still
  building a Litestar ``Response`` (its header object, ``to_asgi_response``) and resolving the
  ``principal`` dependency (``KwargsModel.resolve_dependencies`` and an ``AsyncExitStack`` per
  request), together more than the handler's own work. Now the cached 200 and its 304 are made
  once with the ETag and sent as two ASGI messages, and the route reads the principal from the
  request's state (``api.deps.provide_principal``, what the dependency returns): 114 us in the
  same in-process timing. Before and after, as above: OFREP bulk / health 0.51 -> 0.91 wall clock
  (rounds swing by 2x at a load average of 15), 0.55 -> 0.80 per second of server CPU time. What
  remains beside /health is the generic request path (token, rate limit, CORS, body checks:
  ``api/deps.py``, ``api/bodies.py``), which this program does not change.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import mmh3
from sqlalchemy import insert

from api.auth import secrets
from api.db.base import new_id
from api.db.embedded import start_embedded_postgres
from api.db.engine import make_sync_engine
from api.db.migrate import upgrade
from api.flags.evaluation import FlagDefinition, FlagSnapshot, Override, Rule, Stickiness
from api.flags.models import FeatureFlag
from api.flags.targeting import Constraint, Facts, org_fields
from api.orgs.models import Organization
from api.tokens.models import ApiToken, TokenKind

FLAGS = 50
ORGS = 10_000
ONE_FLAG_EVALUATIONS = 300_000
ALL_FLAGS_CALLS = 20_000
HTTP_CLIENTS = 4
HTTP_REQUESTS = 2_000  # per round, per endpoint
HTTP_ROUNDS = 5
HTTP_WARMUP = 500
TARGET_RATIO = 0.6
#: Answer maps of 50 flags with two rules of three constraints each, beside the rule-less ones.
RULES_TARGET = 0.5
RULE_ROUNDS = 7
RULE_ROUND_CALLS = 3_000
#: OFREP bulk evaluation requests/s beside /health.
OFREP_TARGET = 0.7
PLANS = ("team_monthly", "business_monthly", "enterprise_monthly")
INDUSTRIES = ("fintech", "health", "retail", "media")
#: The whole HTTP part gives up after this long rather than hang `make bench`.
HTTP_TIME_LIMIT = 300


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>12,.0f}/s"


def definitions(n: int) -> dict[str, FlagDefinition]:
    """A realistic mix: mostly org-sticky rollouts, some by user, a few killed or archived."""
    flags = {}
    for i in range(n):
        key = f"bench.flag-{i:02d}"
        flags[key] = FlagDefinition(
            key=key, enabled=i % 17 != 5, archived=i % 23 == 7, rollout_percentage=(i * 7) % 101,
            stickiness=Stickiness.user if i % 5 == 0 else Stickiness.org,
        )  # fmt: skip
    return flags


def with_rules(flags: dict[str, FlagDefinition]) -> dict[str, FlagDefinition]:
    """The same flags, each with two rules of three constraints on server-resolved and client fields."""
    out = {}
    for i, (key, flag) in enumerate(flags.items()):
        rules = (
            Rule(name="enterprise-fintech", rollout_percentage=50, constraints=(
                Constraint("org.plan", "IN", (PLANS[i % 3],)),
                Constraint("org.traits.industry", "IN", (INDUSTRIES[i % 4], "insurance")),
                Constraint("org.seats", "NUM_GTE", (str(10 + i),)),
            )),
            Rule(name="eu-beta", constraints=(
                Constraint("context.country", "IN", ("NO", "SE", "DK", "FI")),
                Constraint("org.traits.region", "STR_STARTS_WITH", ("eu-",)),
                Constraint("user.id", "NOT_IN", ("user-1", "user-2")),
            )),
        )  # fmt: skip
        out[key] = FlagDefinition(
            key=key, enabled=flag.enabled, archived=flag.archived, rollout_percentage=flag.rollout_percentage,
            stickiness=flag.stickiness, rules=rules,
        )  # fmt: skip
    return out


def facts_of(orgs: list[str], users: list[str]) -> list[Facts]:
    rng = random.Random(2)
    return [
        Facts(
            org_id=org,
            user_id=user,
            org={
                "org.plan": rng.choice(PLANS),
                "org.seats": str(rng.randint(1, 80)),
                "org.subscription_status": "active",
            },
            traits={
                "industry": rng.choice(INDUSTRIES),
                "region": rng.choice(("eu-west", "us-east", "eu-north")),
            },
            context={"country": rng.choice(("NO", "US", "SE", "DE"))},
        )
        for org, user in zip(orgs, users, strict=True)
    ]


def in_process() -> None:
    rng = random.Random(1)
    orgs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(ORGS)]
    users = [f"user-{i}" for i in range(ORGS)]
    flags = definitions(FLAGS)
    overrides = {org: {"bench.flag-03": Override(True, "beta")} for org in orgs[:200]}
    many = FlagSnapshot(version=1, flags=flags, overrides=overrides)
    one = FlagSnapshot(version=1, flags={"bench.flag-01": flags["bench.flag-01"]}, overrides=overrides)

    started = time.perf_counter()
    for i in range(ONE_FLAG_EVALUATIONS):
        mmh3.hash(f"bench.flag-01:{orgs[i % ORGS]}", 0, signed=False)
    hash_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for i in range(ONE_FLAG_EVALUATIONS):
        one.evaluate("bench.flag-01", org_id=orgs[i % ORGS])
    one_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for i in range(ALL_FLAGS_CALLS):
        many.evaluate_all(org_id=orgs[i % ORGS], user_id=users[i % ORGS])
    all_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for i in range(ALL_FLAGS_CALLS):
        many.answers(org_id=orgs[i % ORGS], user_id=users[i % ORGS])
    answers_seconds = time.perf_counter() - started

    print("in-process evaluation (one Python thread)")
    print(f"  baseline: murmur3 hashes        {rate(ONE_FLAG_EVALUATIONS, hash_seconds)}")
    print(f"  one flag: evaluations           {rate(ONE_FLAG_EVALUATIONS, one_seconds)}")
    print(f"  {FLAGS} flags: calls (all flags)     {rate(ALL_FLAGS_CALLS, all_seconds)}")
    print(f"  {FLAGS} flags: flag evaluations      {rate(ALL_FLAGS_CALLS * FLAGS, all_seconds)}")
    answers = rate(ALL_FLAGS_CALLS, answers_seconds)
    print(f"  {FLAGS} flags: answer maps           {answers}  (the endpoint's path)")

    ruled = FlagSnapshot(version=1, flags=with_rules(flags), overrides=overrides)
    facts = facts_of(orgs, users)
    org_flats = {f.org_id: org_fields(f.org_id, f.org, f.traits) for f in facts}

    def plain_maps() -> float:
        started = time.process_time()
        for i in range(RULE_ROUND_CALLS):
            many.answers(org_id=orgs[i % ORGS], user_id=users[i % ORGS])
        return RULE_ROUND_CALLS / (time.process_time() - started)

    def ruled_maps() -> float:
        started = time.process_time()
        for i in range(RULE_ROUND_CALLS):
            f = facts[(i * 7919) % ORGS]
            # A new Facts per call, as a request makes one: the org's fields flattened once per org
            # (FlagStore keeps them for FACTS_TTL), the user id and context per call.
            made = Facts(
                org_id=f.org_id, user_id=f.user_id, org=f.org, traits=f.traits, context=f.context,
                org_flat=org_flats[f.org_id],
            )  # fmt: skip
            ruled.answers(org_id=f.org_id, user_id=f.user_id, facts=made)
        return RULE_ROUND_CALLS / (time.process_time() - started)

    # Alternating rounds, CPU time of this process: the machine is shared, so wall-clock rates of
    # two loops run one after the other are not comparable.
    plain, ruled_rates = [], []
    for _ in range(RULE_ROUNDS):
        plain.append(plain_maps())
        ruled_rates.append(ruled_maps())
    p, r = statistics.median(plain), statistics.median(ruled_rates)
    verdict = "meets" if r / p >= RULES_TARGET else "below"
    print(f"  rule-less answer maps (CPU time, median of {RULE_ROUNDS} rounds) {p:>10,.0f}/s")
    print(f"  {FLAGS} flags x 2 rules x 3 constraints: answer maps {r:>10,.0f}/s")
    print(f"    ratio to the rule-less answer maps   {r / p:>8.2f}   ({verdict} the {RULES_TARGET} target)")


def seed(database_url: str) -> str:
    """An organization, its ingest key and the 50 flags; returns the key's secret."""
    engine = make_sync_engine(database_url)
    secret, prefix, digest = secrets.generate(TokenKind.org_ingest)
    org_id = new_id()
    try:
        with engine.begin() as conn:
            conn.execute(insert(Organization).values(id=org_id, name="Bench", slug="bench", status="active"))
            conn.execute(
                insert(ApiToken).values(
                    id=new_id(), kind=TokenKind.org_ingest, name="bench", prefix=prefix,
                    secret_hash=digest, organization_id=org_id,
                )
            )  # fmt: skip
            for flag in definitions(FLAGS).values():
                conn.execute(
                    insert(FeatureFlag).values(
                        id=new_id(), key=flag.key, description="", enabled=flag.enabled,
                        rollout_percentage=flag.rollout_percentage, stickiness=flag.stickiness,
                    )
                )  # fmt: skip
    finally:
        engine.dispose()
    return secret


async def _client(port: int, request: bytes, count: int, statuses: dict[int, int]) -> None:
    """One keep-alive connection sending ``count`` requests in turn (a deliberately thin client)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _round(port: int, request: bytes, total: int) -> float:
    """``total`` requests over ``HTTP_CLIENTS`` connections; returns requests per second."""
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(
        *(_client(port, request, total // HTTP_CLIENTS, statuses) for _ in range(HTTP_CLIENTS))
    )
    seconds = time.perf_counter() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected answers: {statuses}")
    return (total // HTTP_CLIENTS) * HTTP_CLIENTS / seconds


def _post(path: str, token: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _get(path: str, token: str | None = None) -> bytes:
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{authorization}\r\n".encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    port: int, server_pid: int, requests: dict[str, bytes]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Requests/s of each request, in alternating rounds so drift on a shared machine hits all alike,
    and the same rounds' requests per second of the server's CPU time."""
    for request in requests.values():
        await _round(port, request, HTTP_WARMUP)
    rates: dict[str, list[float]] = {name: [] for name in requests}
    cpu_rates: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(HTTP_ROUNDS):
        for name, request in requests.items():
            used = cpu_seconds(server_pid)
            rates[name].append(await _round(port, request, HTTP_REQUESTS))
            used = cpu_seconds(server_pid) - used
            cpu_rates[name].append(HTTP_REQUESTS / used if used > 0 else float("nan"))
    return rates, cpu_rates


def free_port() -> int:
    """A port free right now, chosen by the OS (never a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the API server exited:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if probe.recv(12).endswith(b"200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API server did not answer within 60 s:\n{log.read_text()[-3000:]}")


def over_http() -> None:
    with tempfile.TemporaryDirectory(prefix="keel-bench-flags-") as tmp:
        database_url, pg = start_embedded_postgres(Path(tmp), cleanup="delete")
        try:
            upgrade(database_url)
            token = seed(database_url)
            port = free_port()
            log = Path(tmp) / "server.log"
            env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": tmp}
            command = [
                *(sys.executable, "-m", "uvicorn", "api.server:from_env", "--factory"),
                *("--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"),
            ]
            with log.open("wb") as out:
                server = subprocess.Popen(command, env=env, stdout=out, stderr=out)
            try:
                _wait_until_serving(port, server, log)
                requests = {
                    "health": _get("/health"),
                    "me": _get("/v1/me", token),
                    "evaluate": _get("/v1/flags/evaluate", token),
                    "ofrep": _post(
                        "/ofrep/v1/evaluate/flags", token, b'{"context": {"targetingKey": "user-7"}}'
                    ),
                }
                rates, cpu_rates = asyncio.run(
                    asyncio.wait_for(_measure(port, server.pid, requests), HTTP_TIME_LIMIT)
                )
            finally:
                server.terminate()
                server.wait(timeout=30)
        finally:
            pg.cleanup()

    h, m, e, o = (statistics.median(rates[name]) for name in ("health", "me", "evaluate", "ofrep"))

    def rounds(name: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[name])

    print(f"HTTP, one server process, {HTTP_CLIENTS} keep-alive clients, {HTTP_REQUESTS} requests a round")
    print(f"  baseline: GET /health (no token)      {h:>8,.0f}/s  (rounds: {rounds('health')})")
    print(f"  GET /v1/flags/evaluate ({FLAGS} flags)    {e:>8,.0f}/s  (rounds: {rounds('evaluate')})")
    verdict = "meets" if e / h >= TARGET_RATIO else "below"
    print(f"  ratio evaluate / health               {e / h:>8.2f}   ({verdict} the {TARGET_RATIO} target)")
    print(f"  POST /ofrep/v1/evaluate/flags (bulk)  {o:>8,.0f}/s  (rounds: {rounds('ofrep')})")
    verdict = "meets" if o / h >= OFREP_TARGET else "below"
    print(f"  ratio OFREP bulk / health             {o / h:>8.2f}   ({verdict} the {OFREP_TARGET} target)")
    print(f"  for scale: GET /v1/me (same key, and a db session set up) {m:,.0f}/s (rounds: {rounds('me')});")
    print(f"    evaluate / me = {e / m:.2f}: flags from memory against a route that sets up a session")
    hc, ec, oc = (statistics.median(cpu_rates[name]) for name in ("health", "evaluate", "ofrep"))
    print("  the same rounds per second of the server's CPU time (user + system; medians):")
    print(f"    /health {hc:,.0f}/s, evaluate {ec:,.0f}/s, OFREP bulk {oc:,.0f}/s")
    verdict = "meets" if oc / hc >= OFREP_TARGET else "below"
    print(f"    ratio evaluate / health {ec / hc:.2f}")
    print(f"    ratio OFREP bulk / health {oc / hc:.2f}   ({verdict} the {OFREP_TARGET} target)")


if __name__ == "__main__":
    in_process()
    over_http()
