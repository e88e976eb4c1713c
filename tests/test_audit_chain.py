"""The canonical bytes of an entry: the fast encoder (msgspec) gives exactly the json module's bytes
(the definition, and what the offline script runs) for every entry, or is not used."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api.audit.chain import HASHED_FIELDS, canonical, entry_hash

REFERENCE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)

text = st.text(max_size=12) | st.sampled_from(
    ["plain", "doc_7", 'q"uote', "back\\slash", "é", "\x7f", "\u2028"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | text
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def entries(draw: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        "organization_id": draw(st.none() | st.just(str(uuid.uuid4()))),
        "seq": draw(st.integers(1, 2**62)),
        "occurred_at": datetime.fromtimestamp(draw(st.integers(0, 4_000_000_000)), UTC),
        "metadata": draw(st.dictionaries(text, values, max_size=5)),
        "source": draw(st.sampled_from(["keel", "product"])),
        "targets": draw(
            st.lists(st.fixed_dictionaries({"type": text, "id": text, "name": st.none() | text}), max_size=2)
        ),
    }
    for name in HASHED_FIELDS:
        entry.setdefault(name, draw(st.none() | text))
    return entry


def reference_canonical(entry: dict[str, Any]) -> bytes:
    """canonical() as docs/audit.md defines it, with the json module only."""
    body = {name: entry.get(name) for name in HASHED_FIELDS}
    body["occurred_at"] = entry["occurred_at"].astimezone(UTC).isoformat(timespec="microseconds")
    for name, default in (("source", "keel"), ("targets", [])):
        if entry.get(name) not in (None, default):
            body[name] = entry[name]
    return REFERENCE.encode(body).encode()


@settings(max_examples=400, deadline=None)
@given(entries())
def test_the_fast_canonical_bytes_are_the_json_modules(entry: dict[str, Any]) -> None:
    assert canonical(entry) == reference_canonical(entry)


def test_a_common_entry_and_one_that_needs_escapes_hash_as_defined() -> None:
    for metadata in ({"permission": "edit", "n": 3}, {"note": 'a "quoted"\n line', "ü": "ß"}, {"x": 0.1}):
        entry = {name: None for name in HASHED_FIELDS} | {
            "id": str(uuid.uuid4()), "seq": 1, "occurred_at": datetime.now(UTC), "metadata": metadata,
        }  # fmt: skip
        assert canonical(entry) == reference_canonical(entry)
        assert len(entry_hash(entry, "0" * 64)) == 64


def test_verify_reads_occurred_at_spelled_as_the_hash_spells_it(engine: Any) -> None:
    from sqlalchemy import text as sql

    from api.audit.rows import OCCURRED_AT_AS_HASHED, iso

    when = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 15, 8, 30, 0, 123456, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2031, 6, 1, 0, 0, 0, 1, tzinfo=UTC),
    ]
    expression = OCCURRED_AT_AS_HASHED.replace("occurred_at", "CAST(:t AS timestamptz)")
    with engine.connect() as conn:
        conn.execute(sql("SET TIME ZONE 'America/St_Johns'"))  # a session zone must not matter
        for t in when:
            assert conn.execute(sql(f"SELECT {expression}"), {"t": t}).scalar_one() == iso(t)


@settings(max_examples=300, deadline=None)
@given(entries())
def test_canonical_values_gives_the_bytes_canonical_gives(entry: dict[str, Any]) -> None:
    """verify and the group commit hash an entry from its plain values in CANONICAL_FIELDS order."""
    from api.audit.chain import CANONICAL_FIELDS, canonical_values, values_hash
    from api.audit.rows import iso

    values = [entry.get(name) for name in CANONICAL_FIELDS]
    values[CANONICAL_FIELDS.index("occurred_at")] = iso(entry["occurred_at"])
    assert canonical_values(values) == canonical(entry) == reference_canonical(entry)
    assert values_hash(values, "f" * 64) == entry_hash(entry, "f" * 64)


@settings(max_examples=300, deadline=None)
@given(entries(), st.integers(0, 2**63 - 1))
def test_canonical_parts_splice_any_seq_into_the_canonical_bytes(entry: dict[str, Any], seq: int) -> None:
    """The group commit encodes an entry once, before its seq is known (chain.canonical_parts), and
    splices the seq's digits in: the definition's bytes, whatever the seq and the values."""
    from api.audit.chain import CANONICAL_FIELDS, canonical_parts
    from api.audit.rows import iso

    values = [entry.get(name) for name in CANONICAL_FIELDS]
    values[CANONICAL_FIELDS.index("occurred_at")] = iso(entry["occurred_at"])
    head, tail = canonical_parts(values)
    values[CANONICAL_FIELDS.index("seq")] = seq
    assert head + b"%d" % seq + tail == reference_canonical({**entry, "seq": seq})
    # A caller that knows whether a float is there (a product entry's checks) gets the same bytes.
    floats = any(type(v) is float for v in (*walk(entry["metadata"]), *walk(entry["targets"])))
    assert canonical_parts(values, floats=floats) == (head, tail)


def walk(value: Any) -> list[Any]:
    """Every value nested in ``value``, and it."""
    if isinstance(value, dict):
        return [value, *(v for item in value.values() for v in walk(item))]
    if isinstance(value, list):
        return [value, *(v for item in value for v in walk(item))]
    return [value]
