"""Keyset cursor pagination over UUIDv7 ids (which sort by creation time)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from litestar.params import Parameter

from api.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Limit = Annotated[
    int, Parameter(ge=1, le=MAX_LIMIT, default=DEFAULT_LIMIT, description="Items per page (1-200).")
]
Cursor = Annotated[
    str | None,
    Parameter(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{22}$",
        description="The `next_cursor` of the previous page (opaque).",
    ),
]


def encode_cursor(last_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(last_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> uuid.UUID | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw[:16]) if len(raw) >= 16 else uuid.UUID(bytes=raw)
    except (ValueError, binascii.Error):
        raise ValidationFailed("cursor is not one this API issued", field="cursor") from None


def row_id(row: Any) -> uuid.UUID:
    return row.id  # type: ignore[no-any-return]


def first_id(row: Any) -> uuid.UUID:
    """The key of a ``(model, …)`` row: its first element's id."""
    return row[0].id  # type: ignore[no-any-return]


def next_cursor(rows: Sequence[Any], limit: int, key: Callable[[Any], uuid.UUID] = row_id) -> str | None:
    """Given ``limit + 1`` fetched rows, the cursor for the page after ``rows[:limit]``."""
    return encode_cursor(key(rows[limit - 1])) if len(rows) > limit else None


PageT = TypeVar("PageT")
RowT = TypeVar("RowT")


def page_of(
    page: Callable[..., PageT],
    rows: Sequence[RowT],
    limit: int,
    out: Callable[[RowT], Any],
    *,
    key: Callable[[RowT], uuid.UUID] = row_id,
) -> PageT:
    """The one shape of a list endpoint's answer: the service fetched ``limit + 1`` rows; the
    first ``limit``, each mapped by ``out``, and the cursor of the page after them."""
    return page(items=[out(row) for row in rows[:limit]], next_cursor=next_cursor(rows, limit, key))
