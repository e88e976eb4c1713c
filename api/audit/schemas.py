"""Request and response shapes of the audit log API."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from api.audit.models import ActorType
from api.schemas import Struct

ACTION_PATTERN = r"^[a-z0-9._-]{1,200}$"
Action = Annotated[
    str,
    msgspec.Meta(
        pattern=ACTION_PATTERN,
        description="1-200 lowercase letters, digits, `.`, `_` and `-`. Keel's own actions "
        "(docs/audit-actions.md) and anything under `keel.` or `staff.` are reserved (422).",
        examples=["document.shared"],
    ),
]
TypeName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
# Value rules (strings up to 500 characters, numbers below 1e16, keys of 1-40 characters) are checked
# by the service, which can name the key at fault; msgspec only says "a value of metadata".
MetadataValue = str | int | float | bool | None
MAX_METADATA_KEYS = 50
MAX_TARGETS = 50
MAX_METADATA_KEY = 40
MAX_METADATA_STRING = 500
MAX_METADATA_INT = 2**63 - 1


class ActorIn(Struct, gc=False):
    type: Annotated[
        ActorType,
        msgspec.Meta(description="`staff` and `system` are for Keel's own entries and are refused (422)."),
    ]
    id: Identifier
    name: DisplayName | None = None


class TargetIn(Struct, gc=False):
    type: TypeName
    id: Identifier
    name: DisplayName | None = None


class ContextIn(Struct, gc=False):
    ip: (
        Annotated[str, msgspec.Meta(min_length=2, max_length=64, description="An IPv4 or IPv6 address.")]
        | None
    ) = None
    user_agent: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None = None


class AuditLogCreate(Struct, gc=False):
    """One entry sent by the product (ingest key). A platform ingest key names the ``org_id``."""

    action: Action
    occurred_at: Annotated[
        datetime,
        msgspec.Meta(tz=True, description="ISO-8601 with an offset; at most 24 hours in the future."),
    ]
    actor: ActorIn
    targets: Annotated[list[TargetIn], msgspec.Meta(max_length=MAX_TARGETS)] = msgspec.field(
        default_factory=list
    )
    context: ContextIn | None = None
    metadata: Annotated[
        dict[str, MetadataValue],
        msgspec.Meta(
            max_length=MAX_METADATA_KEYS,
            description="At most 50 keys (1-40 characters); values are strings (up to 500 characters), "
            "numbers (integers within 64 bits, decimals below 1e16 in magnitude), booleans or null.",
        ),
    ] = msgspec.field(default_factory=dict)
    org_id: uuid.UUID | None = None


class ActorOut(msgspec.Struct):
    type: str
    id: str | None
    name: str | None


class TargetOut(msgspec.Struct):
    type: str
    id: str
    name: str | None


class ContextOut(msgspec.Struct):
    ip: str | None
    user_agent: str | None


class AuditLogOut(msgspec.Struct):
    id: uuid.UUID
    organization_id: uuid.UUID | None
    seq: int
    source: str
    action: str
    occurred_at: datetime
    recorded_at: datetime
    actor: ActorOut
    targets: list[TargetOut]
    resource_type: str | None
    resource_id: str | None
    context: ContextOut
    metadata: dict[str, Any]
    request_id: str | None
    prev_hash: str
    hash: str


class AuditLogPage(msgspec.Struct):
    items: list[AuditLogOut]
    next_cursor: str | None


class BrokenEntry(msgspec.Struct):
    id: uuid.UUID | None
    seq: int | None
    reason: str


class ChainPoint(msgspec.Struct):
    seq: int
    hash: str


class VerifyOut(msgspec.Struct):
    ok: bool
    entries_checked: int
    first_broken: BrokenEntry | None
    #: The newest entry the chain records; keep its hash to detect a rewrite of history later.
    head: ChainPoint | None
    #: Where the chain was last pruned (its entries up to ``seq`` are gone), if ever.
    checkpoint: ChainPoint | None


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    csv = "csv"
