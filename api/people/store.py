"""Applying the traits of ``identify``, ``group`` and ``alias`` calls, in one transaction.

Each change is first claimed in its history table by (organization, message_id) — the same key
the events are deduplicated by — so a replayed call changes nothing twice; only the changes
claimed now are merged into the latest traits, in the order of their (skew-corrected) timestamps.
Latest traits are merged key by key (``||``): a key sent later replaces the one before, keys not
sent stay.
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

_SEEN = """
INSERT INTO people AS p (organization_id, user_id, traits, first_seen_at, last_seen_at)
SELECT (e->>0)::uuid, e->>1, e->2, (e->>3)::timestamptz, (e->>4)::timestamptz
FROM jsonb_array_elements(%s::jsonb) AS t(e)
ORDER BY 1, 2
ON CONFLICT (organization_id, user_id) DO UPDATE SET
    traits = p.traits || excluded.traits,
    first_seen_at = least(p.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(p.last_seen_at, excluded.last_seen_at)"""

_ORG_TRAITS = """
UPDATE organizations o SET traits = o.traits || (e->1), updated_at = now()
FROM jsonb_array_elements(%s::jsonb) AS t(e)
WHERE o.id = (e->>0)::uuid"""

_ALIAS = """
INSERT INTO identity_aliases (organization_id, previous_id, user_id, message_id, timestamp)
SELECT (e->>0)::uuid, e->>1, e->>2, e->>3, (e->>4)::timestamptz
FROM jsonb_array_elements(%s::jsonb) AS t(e)
ON CONFLICT DO NOTHING"""


def _traits(row: EventRow) -> dict[str, Any]:
    traits = _decode(bytes(row.properties)).get("traits")
    return traits if isinstance(traits, dict) else {}


async def _claim(conn: PgConnection, table: str, rows: list[EventRow]) -> list[EventRow]:
    """The rows whose change is new (not a replay), in timestamp order."""
    params = [
        [str(r.organization_id), r.message_id, r.user_id, _traits(r), r.timestamp.isoformat(),
         r.received_at.isoformat()]
        for r in rows
    ]  # fmt: skip
    cursor = await conn.execute(_CLAIM.format(table=table), (_encode(params).decode(),))
    fresh = {(org_id, message_id) for org_id, message_id in await cursor.fetchall()}
    claimed = [r for r in rows if (r.organization_id, r.message_id) in fresh]
    claimed.sort(key=lambda r: r.timestamp)
    return claimed


async def apply(conn: PgConnection, rows: list[EventRow]) -> None:
    """Apply the trait calls among ``rows`` (events that passed the ingest path's checks)."""
    identifies = [r for r in rows if r.event == "$identify" and r.user_id is not None]
    groups = [r for r in rows if r.event == "$group"]
    aliases = [r for r in rows if r.event == "$alias" and r.user_id is not None]
    async with conn.transaction():
        # person -> (merged traits, first seen, last seen)
        people: dict[tuple[uuid.UUID, str], tuple[dict[str, Any], datetime, datetime]] = {}

        def seen(org_id: uuid.UUID, user_id: str, traits: dict[str, Any], at: datetime) -> None:
            merged, first, last = people.get((org_id, user_id), ({}, at, at))
            people[(org_id, user_id)] = ({**merged, **traits}, min(first, at), max(last, at))

        if identifies:
            for row in await _claim(conn, "person_trait_changes", identifies):
                assert row.user_id is not None
                seen(row.organization_id, row.user_id, _traits(row), row.timestamp)
        if groups:
            org_traits: dict[uuid.UUID, dict[str, Any]] = defaultdict(dict)
            for row in await _claim(conn, "org_trait_changes", groups):
                org_traits[row.organization_id].update(_traits(row))
                if row.user_id is not None:  # the call ties its user to the org
                    seen(row.organization_id, row.user_id, {}, row.timestamp)
            if org_traits:
                ordered = sorted(org_traits.items(), key=lambda item: item[0])
                await conn.execute(_ORG_TRAITS, (_encode([[str(k), v] for k, v in ordered]).decode(),))
        if aliases:
            params = [
                [str(r.organization_id), _decode(bytes(r.properties)).get("previous_id"), r.user_id,
                 r.message_id, r.timestamp.isoformat()]
                for r in aliases
            ]  # fmt: skip
            await conn.execute(_ALIAS, (_encode(params).decode(),))
            for row in aliases:
                assert row.user_id is not None
                seen(row.organization_id, row.user_id, {}, row.timestamp)
        if people:
            params2 = [
                [str(org_id), user_id, traits, first.isoformat(), last.isoformat()]
                for (org_id, user_id), (traits, first, last) in people.items()
            ]
            await conn.execute(_SEEN, (_encode(params2).decode(),))
