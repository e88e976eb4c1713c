"""Field types shared by every domain's msgspec schemas."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import msgspec

#: Free text Postgres can store: any character but NUL (``text`` cannot hold ``\u0000``). Said in the
#: schema, so clients (and the fuzzer) know it, and refused by field name like any other rule.
NO_NUL = r"^[^\x00]*$"
_NUL_REFUSED = f"Expected `str` matching regex {NO_NUL!r}"

Name = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL, description="1-200 characters, no NUL.")
]
Slug = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9-]*[a-z0-9]$",
        description="3-63 lowercase letters, digits and hyphens; starts and ends with a letter or digit.",
        examples=["acme-corp"],
    ),
]
Email = Annotated[
    str,
    msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$", examples=["ada@example.com"]),
]
ExternalId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00]*\S[^\x00]*$",
        description="The vendor's own id for the organization (its account id): 1-255 characters, no NUL; "
        "unique. A platform write key names the org by it in Segment's `context.groupId`.",
        examples=["acct_1234"],
    ),
]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=NO_NUL)]


def utc_bound(value: datetime) -> datetime:
    """A time filter's bound (with an offset) in UTC, before it reaches Postgres (which refuses
    offsets past ±15:59); a time so close to year 1 or 9999 that UTC cannot hold it means "before
    everything" or "after everything"."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


class Struct(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """Base for request bodies: unknown fields are an error, not silently dropped."""


_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`")
_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def split_validation_message(message: str) -> tuple[str, str]:
    """Turn msgspec's "Expected `str`, got `int` - at `$.events[0].name`" into (field path, message)."""
    path = ""
    match = _AT_PATH.search(message)
    if match:
        path = match.group("path").lstrip(".")
        message = message[: match.start()]
    named = _NAMED_FIELD.search(message)
    if named:
        name = named.group("name")
        path = f"{path}.{name}" if path and not path.endswith("]") else f"{path}{name}" if path else name
    if message == _NUL_REFUSED:  # msgspec names the pattern; people are told what it means
        message = "text cannot contain NUL (\\u0000) characters"
    return path, message
