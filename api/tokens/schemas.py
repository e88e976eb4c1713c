from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from api.schemas import Name, Struct
from api.tokens.models import TokenKind


class TokenCreate(Struct):
    name: Name
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class TokenOut(msgspec.Struct):
    id: uuid.UUID
    kind: TokenKind
    name: str
    prefix: str
    organization_id: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    #: The secret, shown this once: Keel keeps only its hash.
    token: str = ""


class TokenPage(msgspec.Struct):
    items: list[TokenOut]
    next_cursor: str | None
