"""Segment's batch path (issue: the Segment tracking API), beside Keel's own batch path and a raw
COPY, in the same run.

The events of ``bench_events`` (the same ones, from its ``make_events``), sent by 4 clients in
1,000-call batches through the same org ingest key: once in Keel's format to ``/v1/events/batch``
(Bearer), once in Segment's (camelCase, ``type: track``, HTTP Basic with the key as write key) to
``/segment/v1/batch``. Both paths are warmed first (10 batches each, off the clock); then the
three take turns for ``--rounds`` rounds (the two paths swapping places each round), each on an
empty table after a checkpoint (``bench_events.settle``); the median round is the figure. Beside
the rates: each path's CPU per 1,000 events (the server's workers, Postgres's backends; median
round), which the neighbours' load moves much less than the rates. Target: the Segment path at
least 0.9x Keel's own.

Profiled (py-spy record --subprocesses --nonblocking on `keel serve`'s two workers, one phase of
each path at a time, 200,000 events): the Segment handler decoded every call of a batch into a
list, resolved the organizations, normalized the list, then ran the ingest loop over it. The
calls' own msgspec decode had 2-3x the samples of the same decode in Keel's loop (the decode
itself, not more work: in-process, on a warm cache, Segment's decode costs 0.76 ms and Keel's 0.90 ms
per 1,000), with four requests in flight each holding 1,000 decoded calls until the last was read;
Keel's loop frees each event's objects as its row is made. Now the calls stream through the same
loop (``api.segment.services.CallReader`` is its per-item hook) and the references to organizations
are found before it by a byte search of the body. What the Segment path still does that Keel's
does not, in-process per 1,000 calls: that search (0.13 ms: ``groupId`` and a backslash, in C),
the normalization into ``EventIn``'s fields (0.2 ms), the hook's call.

Before / after, this machine, 2026-12-01 18:01-18:09 UTC, load 8-12 from other sessions (main
0950ec8 checked out under /tmp and run with this program, alternating with this branch):
before 0.80x (rounds 0.80, 0.67, 1.17, 0.80, 0.82), server CPU per 1,000 events 7.9 ms Keel's /
11.3 ms Segment = 1.43x, Postgres 11.4 / 10.8 ms; again 0.75x (0.95, 0.72, 0.78, 0.51, 0.75),
server 7.0 / 10.2 ms = 1.46x. After: 1.08x (1.05, 1.16, 1.08, 1.09, 0.96), server 7.5 / 8.3 ms =
1.11x, Postgres 11.5 / 10.7 ms; again 0.94x (0.94, 0.94, 0.81, 1.15, 0.49), server 8.0 / 8.8 ms
= 1.10x. A third pair at 18:25-18:29 (load 11-12): after 0.87x (1.09, 0.87, 0.93, 0.83, 0.84),
server 6.8 / 7.6 ms = 1.12x; before 0.87x (0.87, 1.06, 0.78, 0.74, 1.14), server 7.6 / 9.6 ms =
1.26x. The rates swing by 2x between rounds with the neighbours (at this load both land on the
same median); the server's CPU per event is the steadier figure: 1.26-1.46x before, 1.10-1.12x
after. With a platform key (every Keel event naming ``org_id``, every Segment call
``context.groupId``; a variant of this program, not part of it): Segment's server CPU per event
1.43x Keel's before, 1.2x after (each such call is searched and its reference decoded before the
loop; the organizations are looked up twice, resolved by reference and then checked live).

Tried and not kept: decoding ``properties`` as ``msgspec.Raw`` (no decode and re-encode) saved
0.2 ms per 1,000 in-process, but it must first be proven storable as sent (no escapes, no
exponent or digit run Postgres's numeric would refuse: a regex cost 1 ms per 1,000) and would
store numbers as sent where Keel's path stores them as msgspec does; one decode of the whole
batch into a list of calls was no faster than one decode per call (0.73 vs 0.76 ms per 1,000)."""

from __future__ import annotations

import argparse
import base64
import gc
import json
import statistics
import time

import psutil
import psycopg
from bench_events import BATCH, CLIENTS, SERVER_WORKERS, batch_path, make_events, raw_copy, settle, setup_org
from harness import CpuMeter, HttpLoad, postmaster, private_postgres, row, run, served_api

from api.db.engine import libpq_url

EVENTS = 100_000
#: Batches of each path sent before the rounds (connections and statements warm for both).
WARM_BATCHES = 10


def as_segment(event: dict) -> dict:
    return {
        "type": "track",
        "event": event["event"],
        "userId": event["user_id"],
        "messageId": event["message_id"],
        "timestamp": event["timestamp"],
        "properties": event["properties"],
        "context": event["context"],
    }


async def segment_path(api: str, key: str, bodies: list[bytes], clients: int) -> float:
    credentials = base64.b64encode(f"{key}:".encode()).decode()
    headers = {"Authorization": f"Basic {credentials}", "Content-Type": "application/json"}
    async with HttpLoad(api, clients) as load:
        requests = [load.build("POST", "/segment/v1/batch", body, headers) for body in bodies]
        rate, statuses = await load.closed_loop(requests)
    assert set(statuses) == {200}, f"statuses {set(statuses)}"
    return rate * BATCH


def stored_events(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]


def cpu_seconds(*trees: psutil.Process) -> list[float]:
    """CPU seconds each process tree (the server's workers, Postgres's backends) has spent."""
    return [CpuMeter.tree_seconds(tree) for tree in trees]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=EVENTS, help="events per phase")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent batch clients")
    parser.add_argument("--workers", type=int, default=SERVER_WORKERS, help="server worker processes")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the three")
    args = parser.parse_args()
    print(f"bench_segment: Segment batch path vs Keel's batch path vs raw COPY ({args.workers} worker(s))")
    events = make_events(args.events)
    chunks = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    keel_bodies = [json.dumps({"events": chunk}).encode() for chunk in chunks]
    segment_bodies = [json.dumps({"batch": [as_segment(e) for e in chunk]}).encode() for chunk in chunks]
    gc.collect()
    gc.freeze()
    with private_postgres() as url:
        org_id, key = setup_org(url)
        postgres = postmaster(url)
        with served_api(url, workers=args.workers) as (api, server):
            # Connections, prepared statements and first-call paths warmed for both, off the clock.
            run(lambda: batch_path(api, key, keel_bodies[:WARM_BATCHES], args.clients))
            run(lambda: segment_path(api, key, segment_bodies[:WARM_BATCHES], args.clients))
            rounds = []
            cost: dict[str, list[tuple[float, float]]] = {"keel": [], "segment": []}
            for number in range(args.rounds):
                settle(url)
                copy_rate = raw_copy(url, org_id, events, with_keys=False)
                rates = {}
                # The two paths swap places every round: neither always follows the other's writes.
                for path in ("keel", "segment") if number % 2 == 0 else ("segment", "keel"):
                    settle(url)
                    before = cpu_seconds(server, postgres)
                    if path == "keel":
                        rates[path] = run(lambda: batch_path(api, key, keel_bodies, args.clients))
                    else:
                        rates[path] = run(lambda: segment_path(api, key, segment_bodies, args.clients))
                    time.sleep(0.5)  # a closed connection's backend must exit and be reaped to be counted
                    spent = [b - a for a, b in zip(before, cpu_seconds(server, postgres), strict=True)]
                    cost[path].append((spent[0] / len(events) * 1e6, spent[1] / len(events) * 1e6))
                    stored = stored_events(url)
                    assert stored == len(events), f"{path}: {stored} of {len(events)} events stored"
                keel_rate, segment_rate = rates["keel"], rates["segment"]
                rounds.append((segment_rate / keel_rate, copy_rate, keel_rate, segment_rate))
            settle(url)
        ratio, copy_rate, keel_rate, segment_rate = sorted(rounds)[len(rounds) // 2]
        # CPU per 1,000 events, the median over the rounds: what each path costs whatever the
        # neighbours' load does to the rates.
        server_ms = {path: statistics.median(s for s, _ in runs) for path, runs in cost.items()}
        postgres_ms = {path: statistics.median(p for _, p in runs) for path, runs in cost.items()}
        row("baseline: raw COPY into events, one transaction", f"{copy_rate:,.0f} rows/s", "(median round)")
        shape = f"{BATCH}-event batches, {args.clients} clients"
        row(
            f"Keel's batch path ({shape})",
            f"{keel_rate:,.0f} events/s",
            f"{keel_rate / copy_rate:.0%} of raw COPY",
        )
        row(
            f"Segment batch path ({shape})",
            f"{segment_rate:,.0f} events/s",
            f"{ratio:.2f}x Keel's own (target >= 0.9x), {segment_rate / copy_rate:.0%} of raw COPY",
        )
        row(
            "  CPU per 1,000 events, Keel's / Segment (median round)",
            "",
            f"server {server_ms['keel']:.1f} / {server_ms['segment']:.1f} ms, "
            f"Postgres {postgres_ms['keel']:.1f} / {postgres_ms['segment']:.1f} ms: Segment's server "
            f"CPU {server_ms['segment'] / server_ms['keel']:.2f}x Keel's",
        )
        row(
            f"  every round (COPY / Keel / Segment, {len(events):,} events each)",
            "",
            ", ".join(f"{c:,.0f} / {k:,.0f} / {s:,.0f} = {r:.2f}x" for r, c, k, s in rounds),
        )


if __name__ == "__main__":
    main()
