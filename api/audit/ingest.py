"""Product-sent audit entries (``POST /v1/audit-logs``), with ``Idempotency-Key`` replay for 24 hours."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import msgspec

from api.audit.actions import RESERVED_ACTION_PREFIXES, RESERVED_ACTOR_TYPES, is_reserved_action
from api.audit.models import ActorType
from api.audit.schemas import (
    MAX_METADATA_INT,
    MAX_METADATA_KEY,
    MAX_METADATA_STRING,
    AuditLogCreate,
)
from api.audit.services import MAX_JSON_FLOAT
from api.errors import ValidationFailed

IDEMPOTENCY_TTL = timedelta(hours=24)
MAX_FUTURE = timedelta(hours=24)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
IDEMPOTENCY_HEADER = "Idempotency-Key"


class Answer(msgspec.Struct, frozen=True, gc=False):
    """One entry's answer. (A Struct: built in C, one per entry of a batch, and untracked by the
    garbage collector — it holds no container that could lead back to it.)"""

    status_code: int
    body: bytes
    replayed: bool = False
    #: The stored entry's (id, seq, hash), when known without decoding ``body``.
    stored: tuple[str, int, str] | None = None


def body_hash(data: AuditLogCreate) -> str:
    """Same body, same hash: key order and whitespace do not count, values do."""
    plain = msgspec.to_builtins(data)
    plain.pop("idempotency_key", None)  # a batch entry's key is not part of its body
    return hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_occurred_at(value: datetime, now: datetime) -> datetime:
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or utc < EARLIEST:
        raise ValidationFailed("occurred_at must be after 1970-01-01T00:00:00Z", field="occurred_at")
    if utc > now + MAX_FUTURE:
        raise ValidationFailed(
            f"occurred_at is more than 24 hours in the future (the server's time is {now.isoformat()})",
            field="occurred_at",
        )
    return utc


#: (a tuple: looked up by identity, where a frozenset would call the enum's hash, Python code)
_RESERVED_ACTOR_TYPES = tuple(RESERVED_ACTOR_TYPES)
PRODUCT_ACTOR_TYPES = ", ".join(t.value for t in ActorType if t not in RESERVED_ACTOR_TYPES)


def _check_not_keel(data: AuditLogCreate) -> None:
    """A product entry cannot pass for one of Keel's own: not its actions, not its actor types."""
    if data.actor.type in _RESERVED_ACTOR_TYPES:
        raise ValidationFailed(
            f"actor.type {data.actor.type.value!r} is for Keel's own entries; a product's actor is "
            f"one of {PRODUCT_ACTOR_TYPES}",
            field="actor.type",
        )
    if is_reserved_action(data.action):
        namespaces = " and ".join(f"`{p}*`" for p in RESERVED_ACTION_PREFIXES)
        raise ValidationFailed(
            f"action {data.action!r} is reserved for Keel: Keel's own actions (docs/audit-actions.md) "
            f"and {namespaces} cannot be sent by the product",
            field="action",
        )


def _check_ip(value: str | None) -> str | None:
    if value is None:
        return None
    return _checked_ip(value)


@lru_cache(maxsize=4096)  # parsing an address costs more than the rest of an entry's checks
def _checked_ip(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValidationFailed(f"{value!r} is not an IPv4 or IPv6 address", field="context.ip") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValidationFailed("an address with a zone (`%…`) cannot be stored", field="context.ip")
    return str(address)


def _check_metadata(metadata: dict[str, Any]) -> bool:
    """What msgspec cannot check of metadata (its decoders give exact types: str, int, float,
    bool, None); whether a value is a float."""
    floats = False
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            raise ValidationFailed(
                f"metadata keys are 1-{MAX_METADATA_KEY} characters", field=f"metadata.{key}"[:60]
            )
        kind = type(value)
        if kind is str:
            if len(value) > MAX_METADATA_STRING:
                raise ValidationFailed(
                    f"metadata values are at most {MAX_METADATA_STRING} characters", field=f"metadata.{key}"
                )
        elif kind is int:
            if abs(value) > MAX_METADATA_INT:
                raise ValidationFailed("metadata integers must fit in 64 bits", field=f"metadata.{key}")
        elif kind is float:
            floats = True
            if not abs(value) < MAX_JSON_FLOAT:
                raise ValidationFailed(
                    "metadata numbers must be below 1e16 in magnitude", field=f"metadata.{key}"
                )
    return floats


def _first_nul(value: Any, path: str) -> str | None:
    """The path of the first string (or key) holding a NUL character, which Postgres cannot store."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return f"{path}.{key}" if path else key
            found = _first_nul(item, f"{path}.{key}" if path else key)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_nul(item, f"{path}[{i}]")
            if found:
                return found
    return None


def check_entry(
    data: AuditLogCreate, now: datetime, raw: bytes | None = None
) -> tuple[datetime, str | None, bool]:
    """What msgspec cannot check of one product entry (ValidationFailed naming the field); returns
    its ``occurred_at`` in UTC, its address in the one spelling the hash uses, and whether its
    metadata holds a float. ``raw``: the JSON
    the entry was decoded from, if at hand (JSON spells a NUL only as ``\\u0000``: without one, the
    walk looking for it is skipped).

    The entry is then chained and stored by :class:`api.audit.batch.AuditAppender`."""
    _check_not_keel(data)
    nul = None if raw is not None and b"\\u0000" not in raw else _first_nul(msgspec.to_builtins(data), "")
    if nul:
        raise ValidationFailed("text cannot contain NUL (\\u0000) characters", field=nul.replace(".[", "["))
    floats = _check_metadata(data.metadata)
    occurred_at = _check_occurred_at(data.occurred_at, now)
    ip = _check_ip(data.context.ip if data.context else None)
    return occurred_at, ip, floats
