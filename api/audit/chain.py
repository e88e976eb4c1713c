"""The audit hash chain: SHA-256 over a canonical encoding of an entry plus the previous hash.

Kept free of database code so an auditor's offline check and ``verify`` share one definition.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import product
from operator import itemgetter
from typing import Any

import msgspec

GENESIS = "0" * 64

#: The fields the hash covers, in order. Changing this list breaks every existing chain.
HASHED_FIELDS = (
    "id",
    "organization_id",
    "seq",
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_name",
    "action",
    "resource_type",
    "resource_id",
    "metadata",
    "ip",
    "user_agent",
    "request_id",
)


#: Fields added after the first chains were written (migration 0003), with the value every older
#: entry implicitly has. They are hashed only when they differ from it, so older entries keep
#: their hashes; a non-default value is always hashed, so changing it is still evident.
OPTIONAL_FIELDS: dict[str, Any] = {"source": "keel", "targets": []}


_AS_IS = frozenset({str, int, float, bool, list, dict})
#: The definition of the canonical bytes (and what the offline script in docs/audit.md runs).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: The same bytes ten times faster, where the two provably agree (see ``_encode``).
_FAST_ENCODER = msgspec.json.Encoder(order="sorted")


def _plain(value: Any) -> Any:
    if value is None or type(value) in _AS_IS:
        return value
    if isinstance(value, datetime):
        # Always UTC: Postgres hands timestamps back in the session's time zone.
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)


def _has_float(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return kind is float
    for item in value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and _has_float(item)):
            return True
    return False


def _encode(body: dict[str, Any]) -> bytes:
    """``_ENCODER``'s bytes for ``body``. msgspec writes them when the two cannot differ: no float
    (their spellings of a number could), and an output of ASCII with no backslash — no string held
    a character that needed escaping (control characters, quotes, backslashes) or that is not ASCII,
    so every string, key and number is spelled alike and keys sort alike (code points = bytes).
    Anything else goes through the json module, the definition. ``tests/test_audit_chain.py``
    holds them equal over generated entries."""
    if not (_has_float(body.get("metadata")) or _has_float(body.get("targets"))):
        try:
            fast = _FAST_ENCODER.encode(body)
        except (TypeError, OverflowError):
            fast = b""
        if fast and fast.isascii() and b"\\" not in fast:
            return fast
    return _ENCODER.encode(body).encode()


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers: its hashed fields as compact JSON with sorted keys.

    Values must be what the database gives back: ``ip`` in Python's ``ipaddress`` form, metadata
    as decoded from JSONB (see ``api.audit.services.jsonb_safe``), ``occurred_at`` to the microsecond.
    (Equal to ``json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.)
    """
    body: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = entry.get(name)
        body[name] = value if value is None or type(value) in _AS_IS else _plain(value)
    for name, default in OPTIONAL_FIELDS.items():
        value = entry.get(name)
        if value is not None and value != default:
            body[name] = _plain(value)
    return _encode(body)


#: Every field an entry's hash can cover, in the order :func:`canonical_values` takes their values.
CANONICAL_FIELDS = HASHED_FIELDS + tuple(OPTIONAL_FIELDS)
_OPTIONAL_AT = tuple(
    (name, default, at)
    for at, (name, default) in enumerate(OPTIONAL_FIELDS.items(), start=len(HASHED_FIELDS))
)


def canonical_values(values: Sequence[Any]) -> bytes:
    """:func:`canonical` of an entry given as its values in ``CANONICAL_FIELDS`` order, each one
    already plain (text, numbers, decoded JSON: what ``api.audit.rows.SELECT_FOR_WALK`` reads, or
    what the group commit puts together). The body is built once, with no mapping to look up and
    no value to convert: ``verify``'s per-entry path. The same rules as :func:`canonical` (the
    optional fields left out at their default); ``tests/test_audit_chain.py`` holds them equal."""
    body = dict(zip(HASHED_FIELDS, values, strict=False))  # (stops after the hashed fields)
    for name, default, at in _OPTIONAL_AT:
        value = values[at]
        if value is not None and value != default:
            body[name] = value
    return _encode(body)


class _Half:
    """The canonical body's members on one side of ``seq`` (the body's keys are sorted), written by
    one msgspec encode of a Struct whose fields are those members in sorted order: a Struct class
    for each set of optional fields present (they are left out at their default)."""

    def __init__(self, side: str, names: list[str]) -> None:
        names = sorted(names)
        # Both sides always hold a hashed field, so neither is a bare ``{}`` (whose cut would be wrong).
        assert any(n not in OPTIONAL_FIELDS for n in names)
        self.optional = [
            (OPTIONAL_FIELDS[n], CANONICAL_FIELDS.index(n)) for n in names if n in OPTIONAL_FIELDS
        ]
        #: Where a float can hide (the test _encode makes for one): metadata and targets.
        self.containers = [CANONICAL_FIELDS.index(n) for n in names if n in ("metadata", "targets")]
        self.kinds: dict[tuple[bool, ...], tuple[type[msgspec.Struct], Callable[[Sequence[Any]], Any]]] = {}
        optional = [n for n in names if n in OPTIONAL_FIELDS]
        for present in product((False, True), repeat=len(optional)):
            kept = [n for n in names if n not in {o for o, p in zip(optional, present, strict=True) if not p}]
            kind = msgspec.defstruct(f"_Canonical{side}", [(n, Any) for n in kept], gc=False)
            ats = [CANONICAL_FIELDS.index(n) for n in kept]
            # (itemgetter gives a tuple of two or more indexes' values, and one index's bare value)
            pick = itemgetter(*ats) if len(ats) > 1 else itemgetter(slice(ats[0], ats[0] + 1))
            self.kinds[present] = (kind, pick)

    def encode(self, values: Sequence[Any], floats: bool | None = None) -> bytes:
        """``_encode``'s bytes for the object of these members of ``values`` (``floats``: see
        :func:`canonical_parts`)."""
        present = tuple([values[at] is not None and values[at] != default for default, at in self.optional])
        kind, pick = self.kinds[present]
        picked = pick(values)
        # The test _encode makes: no float, and nothing escaped or beyond ASCII in what msgspec
        # wrote; then the json module would write these very bytes (the members in this order).
        for at in self.containers if floats is not False else ():
            if floats or _has_float(values[at]):
                break
        else:
            try:
                fast = _FAST_ENCODER.encode(kind(*picked))
            except (TypeError, OverflowError):
                fast = b""
            if fast and fast.isascii() and b"\\" not in fast:
                return fast
        return _ENCODER.encode(dict(zip(kind.__struct_fields__, picked, strict=True))).encode()


_BEFORE_SEQ = _Half("BeforeSeq", [n for n in CANONICAL_FIELDS if n < "seq"])
_AFTER_SEQ = _Half("AfterSeq", [n for n in CANONICAL_FIELDS if n > "seq"])
assert "seq" in HASHED_FIELDS


def canonical_parts(values: Sequence[Any], *, floats: bool | None = None) -> tuple[bytes, bytes]:
    """:func:`canonical_values` of ``values`` as the bytes before and after seq's digits (the seq
    among ``values`` is not read): for every seq ``n``, ``head + b"%d" % n + tail`` is
    ``canonical_values`` of ``values`` with seq ``n``. An entry can so be encoded once, before its
    place on the chain is known, and each chaining of it is one concatenation.

    Why the bytes are the same: the canonical body is an object with sorted keys, which the
    definition's encoder (the json module, compact separators) writes as ``{`` + its members
    joined by ``,`` + ``}``, each member spelled on its own. Cut the sorted keys at ``seq``: the
    members before it are the encoding of the object of those fields less its ``}``, the members
    after it that of theirs less its ``{``; ``seq``'s member is ``"seq":`` and the integer's
    digits. Each half is ``_encode``'s bytes for its object (see ``_Half``).
    ``tests/test_audit_chain.py`` holds them equal over generated entries.

    ``floats``: whether metadata or targets hold a float, when the caller knows (a product entry's
    checks tell, its targets being text); ``None``: looked for."""
    return (
        _BEFORE_SEQ.encode(values, floats)[:-1] + b',"seq":',
        b"," + _AFTER_SEQ.encode(values, floats)[1:],
    )


def values_hash(values: Sequence[Any], prev_hash: str) -> str:
    """:func:`entry_hash` of an entry given as :func:`canonical_values` takes it."""
    return hashlib.sha256(canonical_values(values) + prev_hash.encode()).hexdigest()


@lru_cache(maxsize=4096)
def normalize_ip(value: str | None) -> str | None:
    """The one spelling of an address the hash uses: Python's ``ipaddress`` form.

    (Postgres writes IPv4-mapped IPv6 as ``::ffff:1.2.3.4``, Python as ``::ffff:102:304``.)
    A value that is not a plain address is kept as it is, so it cannot match a hash by accident.
    """
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def entry_hash(entry: Mapping[str, Any], prev_hash: str) -> str:
    return hashlib.sha256(canonical(entry) + prev_hash.encode()).hexdigest()
