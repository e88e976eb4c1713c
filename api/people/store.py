"""Applying the traits of ``identify``, ``group`` and ``alias`` calls, in one transaction.

Each change is first claimed in its history table by (organization, message_id) — the same key
the events are deduplicated by — so a replayed call changes nothing twice; only the changes
claimed now are merged into the latest traits, in the order of their (skew-corrected) timestamps.
Latest traits are merged key by key (``||``): a key sent later replaces the one before, keys not
sent stay.

An ``identify`` with only an ``anonymousId`` makes (or updates) a person keyed by that id, marked
``anonymous`` (once any call names the id as a user id, it is not). A later ``alias`` of that id
(the first alias of an id wins), or an ``identify`` carrying both ids while the anonymous person
exists, merges it into the user: the user's row gains its traits (the user's own win) and its
first and last seen, the anonymous row stays with ``merged_into`` (people are never deleted: the
lake exports them by version) and the merge is an ``identity_aliases`` row like an alias call's,
so the warehouse counts one person once. An anonymous identify of an id already merged updates
the user it was merged into.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

import msgspec

from api.events.store import EventRow, PgConnection

TRAIT_EVENTS = frozenset({"$identify", "$group", "$alias"})

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode

_CLAIM = """
INSERT INTO {table} (organization_id, message_id, user_id, traits, timestamp, received_at)
SELECT (e->>0)::uuid, e->>1, e->>2, e->3, (e->>4)::timestamptz, (e->>5)::timestamptz
FROM jsonb_array_elements(%s::jsonb) AS t(e)
ON CONFLICT DO NOTHING
RETURNING organization_id, message_id"""

# ``{merge}``: how the row's traits and the incoming ones combine (a call's traits are newer and
# win; a merged person's yield to the user's own).
_SEEN = """
INSERT INTO people AS p (organization_id, user_id, traits, first_seen_at, last_seen_at, anonymous)
SELECT (e->>0)::uuid, e->>1, e->2, (e->>3)::timestamptz, (e->>4)::timestamptz, (e->>5)::boolean
FROM jsonb_array_elements(%s::jsonb) AS t(e)
ORDER BY 1, 2
ON CONFLICT (organization_id, user_id) DO UPDATE SET
    traits = {merge},
    first_seen_at = least(p.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(p.last_seen_at, excluded.last_seen_at),
    anonymous = p.anonymous AND excluded.anonymous"""
_SEEN_CALLS = _SEEN.format(merge="p.traits || excluded.traits")
_SEEN_MERGED = _SEEN.format(merge="excluded.traits || p.traits")

# Where an anonymous id was merged already: its later identifies update that user.
_MERGED_INTO = """
SELECT a.organization_id, a.previous_id, a.user_id
FROM jsonb_array_elements(%s::jsonb) AS t(e)
JOIN identity_aliases a ON a.organization_id = (e->>0)::uuid AND a.previous_id = e->>1"""

# An identify carrying a user id and an anonymous id merges the anonymous person, if there is one.
_MERGE_ANONYMOUS = """
INSERT INTO identity_aliases (organization_id, previous_id, user_id, message_id, timestamp)
SELECT p.organization_id, p.user_id, e->>2, e->>3, (e->>4)::timestamptz
FROM jsonb_array_elements(%s::jsonb) AS t(e)
JOIN people p ON p.organization_id = (e->>0)::uuid AND p.user_id = e->>1
WHERE p.anonymous AND p.merged_into IS NULL AND p.user_id <> e->>2
ORDER BY p.organization_id, p.user_id, (e->>4)::timestamptz
ON CONFLICT DO NOTHING
RETURNING organization_id, previous_id, user_id"""

# The merged people, marked (never deleted); what they bring to the user they were merged into.
_MARK_MERGED = """
UPDATE people p SET merged_into = e->>2
FROM jsonb_array_elements(%s::jsonb) AS t(e)
WHERE p.organization_id = (e->>0)::uuid AND p.user_id = e->>1 AND p.merged_into IS NULL
RETURNING p.organization_id, p.merged_into, p.traits, p.first_seen_at, p.last_seen_at"""

_ORG_TRAITS = """
UPDATE organizations o SET traits = o.traits || (e->1), updated_at = now()
FROM jsonb_array_elements(%s::jsonb) AS t(e)
WHERE o.id = (e->>0)::uuid"""

_ALIAS = """
INSERT INTO identity_aliases (organization_id, previous_id, user_id, message_id, timestamp)
SELECT (e->>0)::uuid, e->>1, e->>2, e->>3, (e->>4)::timestamptz
FROM jsonb_array_elements(%s::jsonb) AS t(e)
WHERE e->>1 <> e->>2
ON CONFLICT DO NOTHING
RETURNING organization_id, previous_id, user_id"""


def _traits(row: EventRow) -> dict[str, Any]:
    traits = _decode(bytes(row.properties)).get("traits")
    return traits if isinstance(traits, dict) else {}


def _person_id(row: EventRow) -> str:
    """Whom an identify is about: its user id, else (an anonymous identify) its anonymous id."""
    who = row.user_id if row.user_id is not None else row.anonymous_id
    assert who is not None
    return who


async def _claim(conn: PgConnection, table: str, rows: list[EventRow]) -> list[EventRow]:
    """The rows whose change is new (not a replay), in timestamp order."""
    person = table == "person_trait_changes"
    params = [
        [str(r.organization_id), r.message_id, _person_id(r) if person else r.user_id, _traits(r),
         r.timestamp.isoformat(), r.received_at.isoformat()]
        for r in rows
    ]  # fmt: skip
    cursor = await conn.execute(_CLAIM.format(table=table), (_encode(params).decode(),))
    fresh = {(org_id, message_id) for org_id, message_id in await cursor.fetchall()}
    claimed = [r for r in rows if (r.organization_id, r.message_id) in fresh]
    claimed.sort(key=lambda r: r.timestamp)
    return claimed


#: person -> (merged traits, first seen, last seen, anonymous)
People = dict[tuple[uuid.UUID, str], tuple[dict[str, Any], datetime, datetime, bool]]


async def _upsert(conn: PgConnection, statement: str, people: People) -> None:
    if people:
        params = [
            [str(org_id), user_id, traits, first.isoformat(), last.isoformat(), anonymous]
            for (org_id, user_id), (traits, first, last, anonymous) in people.items()
        ]
        await conn.execute(statement, (_encode(params).decode(),))


async def _merge(conn: PgConnection, merges: list[tuple[uuid.UUID, str, str]]) -> None:
    """Merge each (org, earlier id, user id) person into the user: the user's row gains the
    earlier person's traits (the user's own win) and first and last seen; the earlier row is
    marked ``merged_into``."""
    if not merges:
        return
    params = [[str(org_id), previous, user] for org_id, previous, user in sorted(merges)]
    cursor = await conn.execute(_MARK_MERGED, (_encode(params).decode(),))
    brought: People = {}
    for org_id, user_id, traits, first, last in await cursor.fetchall():
        have = brought.get((org_id, user_id))
        if have is not None:  # two ids merged into one user at once: the one seen last wins
            newer, older = (traits, have[0]) if last >= have[2] else (have[0], traits)
            traits, first, last = {**older, **newer}, min(first, have[1]), max(last, have[2])
        brought[(org_id, user_id)] = (traits, first, last, False)
    await _upsert(conn, _SEEN_MERGED, brought)


async def apply(conn: PgConnection, rows: list[EventRow]) -> None:
    """Apply the trait calls among ``rows`` (events that passed the ingest path's checks)."""
    identifies = [r for r in rows if r.event == "$identify" and (r.user_id or r.anonymous_id) is not None]
    groups = [r for r in rows if r.event == "$group"]
    aliases = [r for r in rows if r.event == "$alias" and r.user_id is not None]
    async with conn.transaction():
        people: People = {}

        def seen(
            org_id: uuid.UUID, user_id: str, traits: dict[str, Any], at: datetime, anonymous: bool
        ) -> None:
            merged, first, last, anon = people.get((org_id, user_id), ({}, at, at, anonymous))
            people[(org_id, user_id)] = (
                {**merged, **traits},
                min(first, at),
                max(last, at),
                anon and anonymous,
            )

        # identifies carrying both ids: their anonymous person (if any) is merged into the user
        both: list[EventRow] = []
        if identifies:
            claimed = await _claim(conn, "person_trait_changes", identifies)
            anonymous = {(r.organization_id, _person_id(r)) for r in claimed if r.user_id is None}
            merged_into: dict[tuple[uuid.UUID, str], str] = {}
            if anonymous:
                params = [[str(org_id), anon] for org_id, anon in sorted(anonymous)]
                cursor = await conn.execute(_MERGED_INTO, (_encode(params).decode(),))
                merged_into = {(o, p): u for o, p, u in await cursor.fetchall()}
            for row in claimed:
                if row.user_id is not None:
                    seen(row.organization_id, row.user_id, _traits(row), row.timestamp, False)
                    if row.anonymous_id is not None and row.anonymous_id != row.user_id:
                        both.append(row)
                    continue
                assert row.anonymous_id is not None
                user = merged_into.get((row.organization_id, row.anonymous_id))
                who, anon = (user, False) if user is not None else (row.anonymous_id, True)
                seen(row.organization_id, who, _traits(row), row.timestamp, anon)
        if groups:
            org_traits: dict[uuid.UUID, dict[str, Any]] = defaultdict(dict)
            for row in await _claim(conn, "org_trait_changes", groups):
                org_traits[row.organization_id].update(_traits(row))
                if row.user_id is not None:  # the call ties its user to the org
                    seen(row.organization_id, row.user_id, {}, row.timestamp, False)
            if org_traits:
                ordered = sorted(org_traits.items(), key=lambda item: item[0])
                await conn.execute(_ORG_TRAITS, (_encode([[str(k), v] for k, v in ordered]).decode(),))
        merges: list[tuple[uuid.UUID, str, str]] = []
        if aliases:
            alias_params: list[list[Any]] = [
                [str(r.organization_id), _decode(bytes(r.properties)).get("previous_id"), r.user_id,
                 r.message_id, r.timestamp.isoformat()]
                for r in aliases
            ]  # fmt: skip
            cursor = await conn.execute(_ALIAS, (_encode(alias_params).decode(),))
            merges += [(o, p, u) for o, p, u in await cursor.fetchall()]
            for row in aliases:
                assert row.user_id is not None
                seen(row.organization_id, row.user_id, {}, row.timestamp, False)
        await _upsert(conn, _SEEN_CALLS, people)
        if both:  # after the upsert: an anonymous person made earlier in this batch counts too
            both_params: list[list[Any]] = [
                [str(r.organization_id), r.anonymous_id, r.user_id, r.message_id, r.timestamp.isoformat()]
                for r in sorted(both, key=lambda r: r.timestamp)
            ]  # fmt: skip
            cursor = await conn.execute(_MERGE_ANONYMOUS, (_encode(both_params).decode(),))
            merges += [(o, p, u) for o, p, u in await cursor.fetchall()]
        await _merge(conn, merges)
