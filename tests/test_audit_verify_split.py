"""verify split across processes (a big chain checked in ranges of its seqs, each by a process of
its own in the same snapshot, then linked through ChainWalk) reports exactly what the walk of the
whole chain in one thread reports: intact, tampered in a range or at a joint between two, past
its head, pruned behind a checkpoint; the earliest break wins; a cancelled verify stops its
processes and leaves nothing running."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

import api.audit.verify as verify_module
from api.audit.rows import walk_entry
from api.audit.services import chain_key_of
from api.audit.verify import ChainReport, Split, verify
from api.audit.walk import ChainWalk, Point, link_ranges, walk_range
from api.db.engine import make_async_engine
from api.settings import Settings
from tests.harness import OrgWorld, auth, make_org
from tests.test_audit_ingest import entry
from tests.test_audit_verify import chain, insert_forged, tamper
from tests.test_audit_walk import ORG, SEQ, chain_rows, tampered
from tests.test_cli import keel
from tests.test_db_roles import head_seq

#: Split from 1,000 entries: the chains here (~3,000 entries) are checked in ranges.
SPLIT = Split(processes=4, min_entries=1000)
ONE_THREAD = Split(processes=1, min_entries=Settings().audit_verify_split_entries)


# -- the ranges linked, without a database: any cut, any tampering ---------------------------------


def split_report(
    rows: list[list[Any]], head: Point, checkpoints: dict[int, Point], cuts: list[int], chunk: int
) -> tuple[int, Any, Any]:
    """What link_ranges makes of walk_range over the ranges [cut_i, cut_i+1) of seqs (the first
    open below, the last above), each read in chunks of ``chunk`` rows, as a database hands them."""
    bounds: list[int | None] = [None, *sorted(set(cuts)), None]
    results = []
    for low, high in itertools.pairwise(bounds):
        part = [r for r in rows if (low is None or r[SEQ] >= low) and (high is None or r[SEQ] < high)]
        chunks = [part[at : at + chunk] for at in range(0, len(part), chunk)]
        results.append(walk_range(ORG, head, chunks))
    walk = ChainWalk(ORG, head=head, checkpoints=checkpoints)
    link_ranges(walk, results)
    report = walk.finish()
    return report.entries_checked, report.broken, walk.last


def whole_report(rows: list[list[Any]], head: Point, checkpoints: dict[int, Point]) -> tuple[int, Any, Any]:
    walk = ChainWalk(ORG, head=head, checkpoints=checkpoints)
    for row in rows:
        if not walk.feed(walk_entry(row)):
            break
    report = walk.finish()
    return report.entries_checked, report.broken, walk.last


@hypothesis.settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 25),
    hows=st.lists(
        st.tuples(
            st.sampled_from(["change", "metadata", "targets", "prev_hash", "delete", "duplicate"]),
            st.integers(0, 24),
        ),
        max_size=2,
    ),
    cuts=st.lists(st.integers(-1, 28), max_size=5),
    chunk=st.integers(1, 7),
    checkpoint=st.booleans(),
    head_short=st.booleans(),
)
def test_ranges_linked_report_what_the_whole_walk_reports(
    n: int,
    hows: list[tuple[str, int]],
    cuts: list[int],
    chunk: int,
    checkpoint: bool,
    head_short: bool,
) -> None:
    rows = chain_rows(n)
    head = Point(rows[-1][SEQ] - (1 if head_short and n > 1 else 0), rows[-1][-1])
    checkpoints: dict[int, Point] = {}
    if checkpoint and n > 2:
        checkpoints = {2: Point(2, rows[1][-1], rows[1][0])}
        rows = rows[2:]
    for how, at in hows:  # (up to two tamperings: the earliest must be the one named)
        if rows:  # (a deletion may have emptied a one-entry chain)
            rows = tampered(rows, how, min(at, len(rows) - 1))
    rows.sort(key=lambda r: r[SEQ])  # (what ORDER BY seq hands over)
    assert split_report(rows, head, checkpoints, cuts, chunk) == whole_report(rows, head, checkpoints)


# -- the real thing: processes reading one exported snapshot of a Postgres chain -------------------


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


def big_org(client: httpx.Client, engine: Engine, batches: int = 3) -> OrgWorld:
    """An org whose chain holds ``batches`` thousand entries (and its members' invitations)."""
    org = make_org(client, engine, invite_through_api=True)
    for n in range(batches):
        batch = [entry(metadata={"n": n, "i": i, "ratio": 0.5}) for i in range(1000)]
        response = client.post("/v1/audit-logs/batch", json={"entries": batch}, headers=auth(org.ingest_key))
        assert response.status_code == 200 and response.json()["accepted"] == len(batch), response.text
    return org


def ranges_of(engine: Engine, key: str, start: int = 0) -> list[tuple[int | None, int | None]]:
    ranges = SPLIT.ranges(start, head_seq(engine, key))
    assert len(ranges) >= 2, f"one CPU ({os.cpu_count()}): nothing to split the chain across"
    return ranges


def joint(ranges: list[tuple[int | None, int | None]], at: int = 1) -> int:
    """The first seq of range ``at`` (a joint: the range before ends just below it)."""
    low = ranges[at][0]
    assert low is not None
    return low


async def both(async_engine: AsyncEngine, key: str) -> tuple[ChainReport, ChainReport]:
    """The chain's report walked in one thread and split across processes (the same snapshot is
    not needed: nothing writes to the chain between the two)."""
    whole = await verify(async_engine, chain_key=key, split=ONE_THREAD)
    split = await verify(async_engine, chain_key=key, split=SPLIT)
    return whole.chains[0], split.chains[0]


def change(engine: Engine, key: str, seq: int) -> None:
    tamper(
        engine, "UPDATE audit_log SET action = 'org.viewed' WHERE chain_key = :k AND seq = :s", k=key, s=seq
    )


CASES = (
    "intact",
    "an entry changed in the second range",
    "the first entry of the second range changed",
    "an entry deleted exactly at a joint",
    "the chain cut at a joint",
    "an entry past the head",
    "two ranges broken: the earliest wins",
)


def attack(
    case: str, engine: Engine, key: str, ranges: list[tuple[int | None, int | None]]
) -> tuple[int, str]:
    """Tamper as ``case`` says; the seq verify must name, and words of its reason."""
    at = joint(ranges)
    if case == "an entry changed in the second range":
        change(engine, key, at + 7)
        return at + 7, "was changed"
    if case == "the first entry of the second range changed":
        change(engine, key, at)
        return at, "was changed"
    if case == "an entry deleted exactly at a joint":
        tamper(engine, "DELETE FROM audit_log WHERE chain_key = :k AND seq = :s", k=key, s=at)
        return at + 1, f"entries {at}..{at} are missing before this one"
    if case == "the chain cut at a joint":
        tamper(engine, "UPDATE audit_log SET prev_hash = repeat('e', 64) WHERE chain_key = :k AND seq = :s",
               k=key, s=at)  # fmt: skip
        return at, f"prev_hash does not match the hash of entry {at - 1}: the chain was cut here"
    if case == "an entry past the head":
        rows = chain(engine, key)
        insert_forged(engine, key, rows, len(rows) + 1, hashed_right=True)
        return len(rows) + 1, "past the chain's recorded head"
    assert case == "two ranges broken: the earliest wins"
    change(engine, key, joint(ranges, -1) + 3)
    change(engine, key, at - 2)  # (the end of the first range)
    return at - 2, "was changed"


@pytest.mark.parametrize("case", CASES)
async def test_a_split_verify_reports_what_one_walk_reports(
    client: httpx.Client, engine: Engine, async_engine: AsyncEngine, case: str
) -> None:
    org = big_org(client, engine)
    key = chain_key_of(uuid.UUID(org.id))
    ranges = ranges_of(engine, key)
    if case == "intact":
        whole, split = await both(async_engine, key)
        assert split == whole and whole.ok and whole.entries_checked == head_seq(engine, key), whole
        return
    named, reason = attack(case, engine, key, ranges)
    whole, split = await both(async_engine, key)
    assert split == whole, (split, whole)
    assert whole.broken is not None and whole.broken.seq == named and reason in whole.broken.reason, whole


async def test_a_pruned_prefix_and_its_checkpoint_split_as_one_walk_does(
    client: httpx.Client, engine: Engine, async_engine: AsyncEngine
) -> None:
    org = big_org(client, engine)
    key = chain_key_of(uuid.UUID(org.id))
    through = 700
    with engine.begin() as conn:  # what keel_audit_prune leaves: a checkpoint, the entries gone
        conn.execute(
            text(
                "INSERT INTO audit_checkpoints (chain_key, seq, entry_id, hash, removed)"
                " SELECT chain_key, seq, id, hash, seq FROM audit_log WHERE chain_key = :k AND seq = :s"
            ),
            {"k": key, "s": through},
        )
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("DELETE FROM audit_log WHERE chain_key = :k AND seq <= :s"), {"k": key, "s": through}
        )
    ranges = ranges_of(engine, key, start=through)
    whole, split = await both(async_engine, key)
    assert split == whole and whole.ok, (split, whole)
    assert whole.entries_checked == head_seq(engine, key) - through
    assert whole.checkpoint is not None and whole.checkpoint.seq == through

    change(engine, key, joint(ranges) + 1)  # and a change after it, in the second range
    whole, split = await both(async_engine, key)
    assert split == whole and whole.broken is not None and whole.broken.seq == joint(ranges) + 1


def range_processes() -> list[psutil.Process]:
    """This process's children checking ranges of a chain (``python -m api.audit.walk``)."""
    return [p for p in psutil.Process().children(recursive=True) if "api.audit.walk" in p.cmdline()]


def verify_connections(engine: Engine) -> int:
    """Connections this process's verify processes hold (they name it: ``keel audit verify <pid>``)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": f"keel audit verify {os.getpid()}"},
            ).scalar_one()
        )


async def test_a_cancelled_split_verify_stops_its_processes(
    client: httpx.Client,
    engine: Engine,
    async_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    org = big_org(client, engine, batches=24)
    key = chain_key_of(uuid.UUID(org.id))
    total = head_seq(engine, key)
    monkeypatch.setattr(verify_module, "PROGRESS_SECONDS", 0.01)
    seen: list[int] = []
    running: asyncio.Task[Any] | None = None

    def progress(count: int) -> None:
        seen.append(count)
        assert running is not None
        running.cancel()  # as soon as the processes have read a chunk

    running = asyncio.ensure_future(verify(async_engine, chain_key=key, progress=progress, split=SPLIT))
    with pytest.raises(asyncio.CancelledError):
        await running
    assert seen and seen[0] < total
    assert range_processes() == []  # every process ended, and was waited for
    for _ in range(500):  # (a backend ends a moment after its client has gone)
        if verify_connections(engine) == 0:
            break
        await asyncio.sleep(0.01)
    assert verify_connections(engine) == 0
    again = await verify(async_engine, chain_key=key, split=SPLIT)  # the engine and its pool unharmed
    assert again.ok and again.entries_checked == total, again.as_dict()


def test_the_api_and_the_cli_split_by_the_setting(
    client: httpx.Client, engine: Engine, database_url: str, tmp_path: Path, settings: Any
) -> None:
    from api.app import create_app
    from tests.harness import LiveServer

    org = big_org(client, engine)
    key = chain_key_of(uuid.UUID(org.id))
    ranges = ranges_of(engine, key)
    change(engine, key, joint(ranges) + 11)
    one = client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("admin")).json()
    with (
        LiveServer(create_app(settings.with_(audit_verify_split_entries=1000))) as server,
        httpx.Client(base_url=server.url, timeout=60) as split_client,
    ):
        split = split_client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("admin")).json()
    assert split == one and one["first_broken"]["seq"] == joint(ranges) + 11, (split, one)
    cli = keel("audit", "verify", "--org", org.id, "--json", database_url=database_url, tmp_path=tmp_path,
               audit_verify_split_entries="1000")  # fmt: skip
    assert cli.returncode == 1, cli.stderr
    report = json.loads(cli.stdout)
    assert (
        report["first_broken"]["seq"] == joint(ranges) + 11
        and report["entries_checked"] == one["entries_checked"]
    )


@pytest.mark.parametrize(
    "program", ["import sys; sys.exit(3)", "print('not json')", "import os; os.close(0)"]
)
def test_a_range_process_that_dies_or_talks_nonsense_is_a_503_and_leaves_nothing_behind(
    client: httpx.Client, engine: Engine, settings: Any, monkeypatch: pytest.MonkeyPatch, program: str
) -> None:
    """The API's own verify, its range processes broken three ways: a precise 503 (retry), never a
    500; no process or connection left; the next verify, with working processes, answers."""
    from api.app import create_app
    from tests.harness import LiveServer

    org = big_org(client, engine, batches=2)
    working = verify_module._RANGE_PROGRAM
    with (
        LiveServer(create_app(settings.with_(audit_verify_split_entries=1000))) as server,
        httpx.Client(base_url=server.url, timeout=60) as split_client,
    ):
        monkeypatch.setattr(verify_module, "_RANGE_PROGRAM", (sys.executable, "-c", program))
        answer = split_client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("admin"))
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["detail"].endswith("could not finish; retry") and answer.headers["retry-after"]
        assert not [p for p in psutil.Process().children() if program in p.cmdline()]
        monkeypatch.setattr(verify_module, "_RANGE_PROGRAM", working)
        again = split_client.get(f"/v1/orgs/{org.id}/audit-logs/verify", headers=org.headers("admin"))
        assert again.status_code == 200 and again.json()["ok"] is True, again.text
