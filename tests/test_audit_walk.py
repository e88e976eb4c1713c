"""verify's row walk (``ChainWalk.feed_rows``, no mapping per entry) reports exactly what the
entry-by-entry walk (``ChainWalk.feed``) reports, over chains cut into chunks anywhere and
tampered with anywhere; and the group commit's chaining in advance keeps in-group idempotency
keys and is redone when the head moved."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from api.audit.chain import CANONICAL_FIELDS, GENESIS, values_hash
from api.audit.rows import walk_entry
from api.audit.verify import ChainWalk, Point

ORG = str(uuid.UUID(int=7))


def chain_rows(n: int) -> list[list[Any]]:
    """``n`` rows as SELECT_FOR_WALK hands them over (``[metadata, targets]`` as one JSON text in
    metadata's place, the address as Postgres spells it)."""
    rows, prev = [], GENESIS
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(1, n + 1):
        values: list[Any] = [
            str(uuid.UUID(int=1000 + seq)), ORG, seq,
            (base + timedelta(seconds=seq)).isoformat(timespec="microseconds"), "user", f"u{seq % 3}",
            "Ann" if seq % 2 else None, "document.shared", "document", f"doc_{seq}",
            {"i": seq, "ratio": 0.5} if seq % 2 else {"permission": "edit", "ü": "ß"},
            "203.0.113.7" if seq % 3 else "::ffff:1.2.3.4", None, f"req-{seq}",
            "product" if seq % 2 else "keel", [{"type": "document", "id": f"doc_{seq}", "name": None}],
        ]  # fmt: skip
        hashed = list(values)
        if hashed[11] == "::ffff:1.2.3.4":
            hashed[11] = "::ffff:102:304"  # (what normalize_ip makes of Postgres's spelling)
        digest = values_hash(hashed, prev)
        row = list(values)
        row[10] = json.dumps([values[10], values[15]])
        del row[15]
        rows.append([*row, prev, digest])
        prev = digest
    return rows


SEQ, ACTION, METADATA = CANONICAL_FIELDS.index("seq"), CANONICAL_FIELDS.index("action"), 10


def tampered(rows: list[list[Any]], how: str, at: int) -> list[list[Any]]:
    rows = [list(r) for r in rows]
    if how == "change":
        rows[at][ACTION] = "member.removed"
    elif how == "metadata":
        rows[at][METADATA] = '[{"i": -1}, []]'
    elif how == "targets":  # the targets emptied: the default, left out of the hashed body
        rows[at][METADATA] = json.dumps([json.loads(rows[at][METADATA])[0], []])
    elif how == "prev_hash":
        rows[at][-2] = "0" * 63 + "1"
    elif how == "delete":
        del rows[at]
    elif how == "swap" and at + 1 < len(rows):
        rows[at], rows[at + 1] = rows[at + 1], rows[at]
    elif how == "duplicate":
        rows.insert(at, list(rows[at]))
    return rows


def report_of(
    rows: list[list[Any]], head: Point | None, checkpoints: dict[int, Point], chunks: list[int] | None
):
    walk = ChainWalk(ORG, head=head, checkpoints=checkpoints)
    if chunks is None:  # the reference: one mapping per entry through feed()
        for row in rows:
            if not walk.feed(walk_entry(row)):
                break
    else:
        at = 0
        for size in chunks:
            if not walk.feed_rows(rows[at : at + size]):
                break
            at += size
        else:
            walk.feed_rows(rows[at:])
    report = walk.finish()
    return report.entries_checked, report.broken, walk.last


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 25),
    how=st.sampled_from(
        ["none", "change", "metadata", "targets", "prev_hash", "delete", "swap", "duplicate"]
    ),
    at=st.integers(0, 24),
    chunks=st.lists(st.integers(1, 7), max_size=8),
    checkpoint=st.booleans(),
    head_short=st.booleans(),
)
def test_the_row_walk_reports_what_the_entry_walk_reports(
    n: int, how: str, at: int, chunks: list[int], checkpoint: bool, head_short: bool
) -> None:
    rows = chain_rows(n)
    last = rows[-1]
    head = Point(last[SEQ] - (1 if head_short and n > 1 else 0), last[-1])
    checkpoints: dict[int, Point] = {}
    if checkpoint and n > 2:  # the first entries pruned, a checkpoint recording them
        checkpoints = {2: Point(2, rows[1][-1], rows[1][0])}
        rows = rows[2:]
    rows = tampered(rows, how, min(at, len(rows) - 1))
    expected = report_of(rows, head, checkpoints, None)
    assert report_of(rows, head, checkpoints, chunks) == expected
    if how == "none" and not head_short:
        assert expected[1] is None and expected[0] == len(rows)


def test_a_clean_chain_in_many_chunks_is_accepted_by_the_row_path() -> None:
    rows = chain_rows(40)
    walk = ChainWalk(ORG, head=Point(40, rows[-1][-1]), checkpoints={})
    for at in range(0, 40, 6):
        assert walk.feed_rows(rows[at : at + 6])
    report = walk.finish()
    assert report.ok and report.entries_checked == 40


def prepared(n: int, keys: dict[int, str], key: str = ORG) -> list[Any]:
    """``n`` product entries checked and encoded for the chain ``key``, entry ``i`` keyed ``keys[i]``."""
    from api.audit.batch import AuditBatchEntry, prepare

    now = datetime.now(UTC)
    out = []
    for i in range(n):
        body = {
            "action": "document.shared", "occurred_at": now.isoformat(), "actor": {"type": "user", "id": "u1"},
            "metadata": {"i": i},
        }  # fmt: skip
        data = msgspec.convert(body, AuditBatchEntry)
        out.append(
            prepare(data, key=key, request_id=None, idempotency_key=keys.get(i), now=now, answer_body=False)
        )
    return out


def test_chaining_in_advance_keeps_a_key_met_in_an_earlier_slice_a_replay() -> None:
    from api.audit.batch import _PLAN_SLICE, _Pending, _plan, _plan_async

    entries = prepared(_PLAN_SLICE + 50, {3: "same-key", _PLAN_SLICE + 10: "same-key"})

    async def ahead() -> Any:
        return await _plan_async(
            (5, "a" * 64), [_Pending(entries, asyncio.get_running_loop().create_future())]
        )

    plan = asyncio.run(ahead())
    assert plan.links[_PLAN_SLICE + 10] is None and plan.links[3] is not None
    assert len(plan.rows) == len(plan.stored) == len(entries) - 1
    # The same links and rows as chaining the group at once; the rows chain from the base in order.
    at_once = _plan((5, "a" * 64), entries, {})
    assert plan.links == at_once.links and plan.rows == at_once.rows and plan.stored == at_once.stored
    rows = [json.loads(r) for r in plan.rows]
    assert [r["seq"] for r in rows] == [s for _, s, _ in plan.stored] == list(range(6, 6 + len(rows)))
    assert [r["id"] for r in rows] == [i for i, _, _ in plan.stored]
    assert rows[0]["prev_hash"] == "a" * 64
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
    assert plan.end == (rows[-1]["seq"], rows[-1]["hash"]) == plan.stored[-1][1:]


def test_a_chained_row_is_the_canonical_object_it_hashes() -> None:
    """A row the group commit inserts is the entry's canonical bytes with seq spliced in, plus its
    prev_hash and hash; its hash is values_hash of its values (chain.canonical_parts)."""
    from api.audit.batch import _plan
    from api.audit.chain import CANONICAL_FIELDS, OPTIONAL_FIELDS, values_hash

    entries = prepared(3, {})
    plan = _plan((41, "b" * 64), entries, {})
    prev = "b" * 64
    for row, (_, seq, digest) in zip(plan.rows, plan.stored, strict=True):
        body = json.loads(row)
        assert (body.pop("prev_hash"), body.pop("hash")) == (prev, digest)
        values = [body.get(name, OPTIONAL_FIELDS.get(name)) for name in CANONICAL_FIELDS]
        assert values_hash(values, prev) == digest and body["seq"] == seq
        prev = digest


def test_a_batch_is_checked_with_the_collector_held_off_and_given_back_whatever_happens() -> None:
    """ingest_batch decodes and checks with the garbage collector off (api.audit.batch); a refused
    batch (here a 413 raised inside) gives it back on, and one off before stays off."""
    import gc

    import pytest

    from api.audit.batch import _collector_paused
    from api.errors import PayloadTooLarge

    assert gc.isenabled()
    with pytest.raises(PayloadTooLarge), _collector_paused():
        assert not gc.isenabled()
        raise PayloadTooLarge("too many")
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
