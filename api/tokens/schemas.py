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


#: A browser origin as the ``Origin`` header sends it: scheme, host and optional port, no path.
BrowserOrigin = Annotated[
    str, msgspec.Meta(max_length=255, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")
]


class IngestKeyCreate(TokenCreate):
    #: A publishable key (``keel_pub_...``): safe in a web page, it may only send events and
    #: evaluate flags.
    publishable: bool = False
    #: The browser origins the key is accepted from. None: a publishable key from any origin,
    #: a secret key from no browser at all.
    allowed_origins: Annotated[list[BrowserOrigin], msgspec.Meta(max_length=50)] | None = None


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
    publishable: bool = False
    allowed_origins: list[str] | None = None


class TokenCreated(TokenOut):
    #: The secret, shown this once: Keel keeps only its hash.
    token: str = ""


class TokenPage(msgspec.Struct):
    items: list[TokenOut]
    next_cursor: str | None
