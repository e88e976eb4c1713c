from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class PersonOut(msgspec.Struct):
    user_id: str
    #: The latest traits (``identify`` calls, merged key by key).
    traits: dict[str, Any]
    first_seen_at: datetime
    last_seen_at: datetime
    #: Earlier ids merged into this one by ``alias`` calls (or an ``identify`` carrying both ids).
    aliases: list[str] = msgspec.field(default_factory=list)
    #: Known only by an anonymous id (``user_id`` holds it): no call named a user id for them yet.
    anonymous: bool = False


class PersonPage(msgspec.Struct):
    items: list[PersonOut]
    next_cursor: str | None
