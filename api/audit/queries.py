"""Reading the audit log: filters, newest first, keyset cursors that hold while entries are added."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any

from litestar.params import Parameter
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.audit.models import ActorType, AuditEntry
from api.auth.context import Actor, RequestContext
from api.errors import NotFound, ValidationFailed
from api.orgs.models import Organization
from api.pagination import decode_cursor, encode_cursor
from api.schemas import utc_bound

ACTION_FILTER = r"^[a-z0-9._-]{1,200}$|^[a-z0-9._-]{1,198}\.\*$"
ActionFilter = Annotated[
    str | None,
    Parameter(
        default=None,
        pattern=ACTION_FILTER,
        description="An action (`member.removed`), or every action under a prefix (`member.*`).",
    ),
]
SeqCursor = Annotated[
    str | None,
    Parameter(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{11}$",
        description="The `next_cursor` of the previous page (opaque).",
    ),
]


@dataclass(frozen=True, slots=True)
class AuditFilters:
    action: str | None = None
    actor_type: ActorType | None = None
    actor_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is None:
                continue
            if value.tzinfo is None:
                raise ValidationFailed(f"{name} needs a time zone offset (e.g. `Z` or `+02:00`)", field=name)
            object.__setattr__(self, name, utc_bound(value))
        # An inverted range is not an error: it matches nothing, like any other empty window.

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.action is not None:
            if self.action.endswith(".*"):
                query = query.where(AuditEntry.action.startswith(self.action[:-1], autoescape=True))
            else:
                query = query.where(AuditEntry.action == self.action)
        for name in ("actor_type", "actor_id", "resource_type", "resource_id"):
            value = getattr(self, name)
            if value is not None:
                query = query.where(getattr(AuditEntry, name) == value)
        if self.since is not None:
            query = query.where(AuditEntry.occurred_at >= self.since)
        if self.until is not None:
            query = query.where(AuditEntry.occurred_at < self.until)
        return query

    def described(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if v}


def encode_seq_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(seq.to_bytes(8, "big")).decode().rstrip("=")


_SEQ_CURSOR = re.compile(r"^[A-Za-z0-9_-]{11}$")


def decode_seq_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        if not _SEQ_CURSOR.match(cursor):
            raise ValueError(cursor)
        seq = int.from_bytes(base64.urlsafe_b64decode(cursor + "="), "big")
    except (ValueError, binascii.Error):
        raise ValidationFailed("cursor is not one this API issued", field="cursor") from None
    return min(seq, 2**63 - 1)  # any well-formed cursor is a position: "entries before this seq"


async def org_entries(
    session: AsyncSession, *, org_id: uuid.UUID, filters: AuditFilters, cursor: str | None, limit: int
) -> tuple[list[AuditEntry], str | None]:
    """One org's entries, newest first by chain position: a new entry always lands before page one,
    so following ``next_cursor`` never skips or repeats an entry while writers keep appending."""
    before_seq = decode_seq_cursor(cursor)
    query = (
        select(AuditEntry)
        .where(AuditEntry.chain_key == audit.chain_key_of(org_id))
        .order_by(AuditEntry.seq.desc())
        .limit(limit + 1)
    )
    if before_seq is not None:
        query = query.where(AuditEntry.seq < before_seq)
    rows = list((await session.scalars(filters.apply(query))).all())
    following = encode_seq_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return rows[:limit], following


async def all_entries(
    session: AsyncSession,
    *,
    org_id: uuid.UUID | None,
    filters: AuditFilters,
    cursor: str | None,
    limit: int,
    actor: Actor,
    ctx: RequestContext,
) -> tuple[list[AuditEntry], str | None]:
    """Staff view across organizations, newest first by id (UUIDv7: time order), itself audited.

    Each organization whose entries are shown gets a ``staff.audit_viewed`` entry in its own chain;
    a page that shows no organization's entries is recorded in the platform chain.
    """
    if org_id is not None and await session.get(Organization, org_id) is None:
        raise NotFound("organization not found")
    after = decode_cursor(cursor)
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if org_id is not None:
        query = query.where(AuditEntry.organization_id == org_id)
    if after is not None:
        query = query.where(AuditEntry.id < after)
    rows = list((await session.scalars(filters.apply(query))).all())
    page = rows[:limit]
    following = encode_cursor(page[-1].id) if len(rows) > limit else None
    shown = {e.organization_id for e in page if e.organization_id is not None}
    if org_id is not None:
        shown.add(org_id)
    viewed: list[uuid.UUID | None] = sorted(shown) if shown else [None]  # sorted: one lock order for all
    for viewed_org in viewed:
        await audit.record(
            session, action="staff.audit_viewed", actor=actor, ctx=ctx, organization_id=viewed_org,
            resource_type="audit_log", resource_id=viewed_org or "all",
            metadata={
                "filters": {**filters.described(), **({"org_id": str(org_id)} if org_id else {})},
                "entries_shown": sum(1 for e in page if e.organization_id == viewed_org),
            },
        )  # fmt: skip
    return page, following
