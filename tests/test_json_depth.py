"""The JSON depth check (``api.bodies.nests_too_deep``, C loops only) agrees with a scanner that
reads one character at a time, on bodies made of what matters to it: brackets, quotes, escapes."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from api.bodies import MAX_JSON_DEPTH, nests_too_deep


def deepest(data: bytes) -> int:
    """The deepest nesting outside strings, one character at a time (unclosed openers count).

    A backslash before a backslash or a quote makes that character text, inside a string or not
    (outside one it is no JSON anyway; the check reads it so too)."""
    depth = deepest = 0
    in_string = False
    at = 0
    while at < len(data):
        char = chr(data[at])
        if char == "\\" and data[at + 1 : at + 2] in (b"\\", b'"'):
            at += 2
            continue
        if char == '"':
            in_string = not in_string
        elif not in_string and char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not in_string and char in "]}":
            depth -= 1
        at += 1
    return deepest


pieces = st.sampled_from(
    [b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b",", b":", b'\\"', b"\\\\", b"[[[", b"]]]"]
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(pieces, max_size=80), st.integers(0, 6))
def test_the_depth_check_agrees_with_a_character_scanner(parts: list[bytes], limit: int) -> None:
    data = b"".join(parts)
    assert nests_too_deep(data, limit) == (deepest(data) > limit)


def test_a_batch_of_a_thousand_entries_is_shallow_and_one_level_more_than_the_limit_is_not() -> None:
    entries = [
        {"action": "a.b", "targets": [{"id": f"d{i}", "name": '"[{'}], "metadata": {"x": "]]"}}
        for i in range(1000)
    ]
    assert not nests_too_deep(json.dumps({"entries": entries}).encode())
    deep = b"[" * MAX_JSON_DEPTH + b'"]]]"' + b"]" * MAX_JSON_DEPTH
    assert not nests_too_deep(deep)
    assert nests_too_deep(b"[" + deep + b"]")
