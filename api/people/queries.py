"""Reading an organization's people: by user id (keyset on it), filtered by traits. A person merged
into another (``merged_into``) is listed no more: reading them reads the person they are now."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import NotFound, ValidationFailed
from api.people.models import identity_aliases_table as aliases
from api.people.models import people_table as people
from api.people.schemas import PersonOut


def encode_cursor(user_id: str) -> str:
    """People are listed by user id: a page's cursor is its last user id (any text is a cursor)."""
    return user_id


def decode_cursor(cursor: str | None) -> str | None:
    return cursor


def parse_trait_filters(filters: list[str] | None) -> list[tuple[str, str]]:
    """``name:value`` pairs (the value compared as text, as ``traits->>name`` reads it)."""
    parsed = []
    for item in filters or []:
        name, colon, value = item.partition(":")
        if not colon or not name:
            raise ValidationFailed("each trait filter is `name:value`", field="trait")
        parsed.append((name, value))
    return parsed


async def _aliases(session: AsyncSession, org_id: uuid.UUID, user_ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    if user_ids:
        rows = await session.execute(
            select(aliases.c.user_id, aliases.c.previous_id)
            .where(aliases.c.organization_id == org_id, aliases.c.user_id.in_(user_ids))
            .order_by(aliases.c.previous_id)
        )
        for user_id, previous_id in rows:
            found[user_id].append(previous_id)
    return found


async def list_people(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    traits: list[tuple[str, str]],
    cursor: str | None,
    limit: int,
) -> tuple[list[PersonOut], str | None]:
    query = (
        select(people)
        .where(people.c.organization_id == org_id, people.c.merged_into.is_(None))
        .order_by(people.c.user_id)
    )
    for name, value in traits:
        query = query.where(people.c.traits[name].astext == value)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(people.c.user_id > after)
    rows = (await session.execute(query.limit(limit + 1))).mappings().all()
    page = rows[:limit]
    merged = await _aliases(session, org_id, [r["user_id"] for r in page])
    items = [_person(r, merged) for r in page]
    return items, encode_cursor(page[-1]["user_id"]) if len(rows) > limit else None


def _person(row: Any, merged: dict[str, list[str]]) -> PersonOut:
    return PersonOut(
        user_id=row["user_id"], traits=row["traits"], first_seen_at=row["first_seen_at"],
        last_seen_at=row["last_seen_at"], aliases=merged.get(row["user_id"], []), anonymous=row["anonymous"],
    )  # fmt: skip


async def _row(session: AsyncSession, org_id: uuid.UUID, user_id: str) -> Any:
    query = select(people).where(people.c.organization_id == org_id, people.c.user_id == user_id)
    return (await session.execute(query)).mappings().one_or_none()


async def get_person(session: AsyncSession, *, org_id: uuid.UUID, user_id: str) -> PersonOut:
    """The person ``user_id`` names: theirs, or (an id merged into a user) that user's."""
    row = await _row(session, org_id, user_id)
    if row is not None and row["merged_into"] is not None:
        row = await _row(session, org_id, row["merged_into"])
    if row is None:
        raise NotFound("no such person in this organization")
    merged = await _aliases(session, org_id, [row["user_id"]])
    return _person(row, merged)
