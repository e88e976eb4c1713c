"""Ingest cost as work grows (issue 20): the batch path with N dedupe keys held vs the same server
with an empty key table.

One `keel serve` (2 workers) against a private Postgres reached over TCP (127.0.0.1, a free port),
sized by api/db/embedded.py's machine_settings() (`--stock`: Postgres's own defaults). For each size
of the key table (0, 5 and 20 million keys; 50 million with KEEL_BENCH_GROWTH_MAX=50000000, which
takes the default run past ten minutes on a 2-core machine), the keys are filled server-side with
generate_series (random hex message ids, one organization, spread over the 30 days of retention
before today, as 30 days of traffic leave them; `--same-day` puts them all on today instead), then
`--rounds` rounds of 40 batches of 1,000 new events (random message ids) go through
`POST /v1/events/batch` from 4 keep-alive clients. The median round is the figure; the empty-table
rate is measured first and again at the end (after a TRUNCATE), and their median is the baseline
every ratio is against (target at 20 million: >= 0.85).

Findings (2026-12-01, this machine: 2 cores shared with other sessions, 24 GB):
FINDINGS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from bench_events import setup_org
from harness import HttpLoad, private_postgres, row, run, served_api

from api.db.engine import libpq_url

BATCH = 1_000
BATCHES = 40
CLIENTS = 4
RETENTION_DAYS = 30
SIZES = (0, 5_000_000, 20_000_000, 50_000_000)
MAX_KEYS = int(os.environ.get("KEEL_BENCH_GROWTH_MAX", "20000000"))
FILL_CHUNK = 5_000_000


def bodies(n_batches: int) -> list[bytes]:
    now = datetime.now(UTC)
    out = []
    for _ in range(n_batches):
        events = [
            {
                "event": "dashboard.viewed",
                "user_id": f"user-{i % 500}",
                "message_id": uuid.uuid4().hex,  # random over the index, like clients' uuids
                "timestamp": (now - timedelta(seconds=i)).isoformat(),
                "properties": {"plan": "pro", "source": "web", "n": i},
                "context": {"library": {"name": "bench", "version": "1.0"}},
            }
            for i in range(BATCH)
        ]
        out.append(json.dumps({"events": events}).encode())
    return out


def fill(url: str, org_id: str, start: int, stop: int, *, same_day: bool) -> float:
    """Keys start..stop-1 into event_keys, sorted by message id within a chunk (so each index, the
    global one or a day's, is filled mostly in order: minutes, not hours); seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        today = datetime.now(UTC).date()
        conn.execute("SET work_mem = '1GB'")
        conn.execute(
            "SELECT keel_ensure_event_partitions(%s, %s)", (today - timedelta(days=RETENTION_DAYS), 32)
        )
        day = "0" if same_day else f"(1 + i %% {RETENTION_DAYS})::int"
        for lo in range(start, stop, FILL_CHUNK):
            hi = min(stop, lo + FILL_CHUNK)
            conn.execute(
                "INSERT INTO event_keys (organization_id, message_id, received_at)"
                f" SELECT %s, md5(i::text), date_trunc('day', now()) - make_interval(days => {day})"
                " + interval '12 hours' FROM generate_series(%s::bigint, %s::bigint - 1) AS i ORDER BY 2",
                (org_id, lo, hi),
            )
        conn.execute("VACUUM ANALYZE event_keys")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def settle(url: str, *, empty: bool) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        if empty:
            conn.execute("TRUNCATE event_keys")
        conn.execute("TRUNCATE events")
        conn.execute("CHECKPOINT")


def key_count(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        (n,) = conn.execute("SELECT count(*) FROM event_keys").fetchone()  # type: ignore[misc]
        return int(n)


async def batch_rate(api: str, key: str, payloads: list[bytes]) -> float:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with HttpLoad(api, CLIENTS) as load:
        requests = [load.build("POST", "/v1/events/batch", body, headers) for body in payloads]
        rate, statuses = await load.closed_loop(requests)
    assert set(statuses) == {200}, f"statuses {set(statuses)}"
    return rate * BATCH


def measure(url: str, api: str, key: str, rounds: int, *, empty: bool) -> tuple[float, list[float]]:
    rates = []
    for _ in range(rounds):
        settle(url, empty=empty)
        payloads = bodies(BATCHES)
        rates.append(run(lambda: batch_rate(api, key, payloads)))  # noqa: B023
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 40 batches per size (median counts)")
    parser.add_argument(
        "--stock", action="store_true", help="Postgres's stock settings (not machine_settings())"
    )
    parser.add_argument("--same-day", action="store_true", help="every filled key received today")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = parser.parse_args()
    sizes = [s for s in SIZES if s <= MAX_KEYS]
    print(
        f"bench_ingest_growth: batch path vs keys held ({args.workers} workers, Postgres over TCP,"
        f" {'stock' if args.stock else 'machine-sized'} settings, keys on"
        f" {'today' if args.same_day else f'the {RETENTION_DAYS} days before today'})"
    )
    with private_postgres(tcp=True, sized=not args.stock) as url:
        org_id, key = setup_org(url)
        with served_api(url, workers=args.workers) as (api, _process):
            run(lambda: batch_rate(api, key, bodies(4)))  # warm the workers' connections
            _, first_rounds = measure(url, api, key, args.rounds, empty=True)
            results = []
            held = 0
            for size in sizes[1:]:
                seconds = fill(url, org_id, held, size, same_day=args.same_day)
                held = size
                rate, rounds = measure(url, api, key, args.rounds, empty=False)
                results.append((size, key_count(url), rate, rounds, seconds))
            _, last_rounds = measure(url, api, key, args.rounds, empty=True)
            baseline = statistics.median([*first_rounds, *last_rounds])
            row(
                "baseline: batch path, empty key table",
                f"{baseline:,.0f} events/s",
                f"(rounds: first {', '.join(f'{r:,.0f}' for r in first_rounds)};"
                f" last {', '.join(f'{r:,.0f}' for r in last_rounds)})",
            )
            for size, count, rate, rounds, seconds in results:
                target = " (target >= 85%)" if size == 20_000_000 else ""
                row(
                    f"batch path after {size / 1e6:.0f} million keys",
                    f"{rate:,.0f} events/s",
                    f"{rate / baseline:.0%} of empty{target};"
                    f" rounds {', '.join(f'{r:,.0f}' for r in rounds)};"
                    f" {count:,} keys, filled in {seconds:.0f} s",
                )


if __name__ == "__main__":
    main()
