"""Recording ingestion warnings: every message the ingest path refused, counted per organization,
key, reason and UTC day, with the latest one's text and first characters as a sample.

Reasons (``ItemRejected.reason`` in :mod:`api.events.services`):

- ``invalid_field``: a field is missing, of the wrong type or not storable (named in ``error``);
- ``oversized``: one message over the per-message limit;
- ``timestamp_out_of_range``: out of range after clock-skew correction, or more than 24 h ahead;
- ``unknown_org``: a platform key's message names no organization that exists (its org is null);
- ``suspended_org``: it names a suspended organization;
- ``foreign_org``: an org key's message names another organization.

Recording never fails a batch: its valid messages are stored first, and an error writing the
warnings is logged and dropped. Rows are kept :data:`RETENTION` (the ``retention`` flow purges them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import msgspec

from api.auth.context import Principal
from api.db.base import new_id
from api.ingestion.models import WARNING_KEY

if TYPE_CHECKING:
    from api.events.store import Writer

log = logging.getLogger("keel.ingestion")

RETENTION = timedelta(days=30)
SAMPLE_CHARS = 2_000


class Rejected(Protocol):
    error: str
    reason: str
    message_id: str | None


@dataclass(frozen=True, slots=True)
class Warning:
    organization_id: uuid.UUID | None
    token_id: uuid.UUID
    reason: str
    at: datetime
    message_id: str | None
    error: str
    sample: str


def of_rejection(exc: Rejected, *, principal: Principal, sample: bytes, at: datetime) -> Warning:
    """A rejection as a warning: with an org key, its org; with a platform key, the org the message
    named when it exists (``unknown_org`` has none)."""
    org_id = principal.organization_id
    if org_id is None and exc.reason != "unknown_org":
        org_id = _named_org(sample)
    text = sample[: SAMPLE_CHARS * 4].decode("utf-8", "replace")[:SAMPLE_CHARS].replace("\x00", "\ufffd")
    return Warning(
        organization_id=org_id, token_id=principal.token_id, reason=exc.reason, at=at,
        message_id=(exc.message_id or None) and exc.message_id[:128].replace("\x00", ""),
        error=exc.error.replace("\x00", "\ufffd")[:1000], sample=text,
    )  # fmt: skip


class _Named(msgspec.Struct):
    org_id: uuid.UUID | None = None


_named = msgspec.json.Decoder(_Named)


def _named_org(sample: bytes) -> uuid.UUID | None:
    try:
        return _named.decode(sample).org_id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


_UPSERT = f"""
INSERT INTO ingestion_warnings AS w (id, organization_id, token_id, reason, day, count, first_seen_at,
                                     last_seen_at, message_id, error, sample)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT ({WARNING_KEY}) DO UPDATE SET
    count = w.count + excluded.count, last_seen_at = excluded.last_seen_at,
    message_id = excluded.message_id, error = excluded.error, sample = excluded.sample"""


async def record(writer: Writer, warnings: Sequence[Warning]) -> None:
    """Count ``warnings`` (one upsert per key); logged, never raised, on failure."""
    grouped: dict[tuple[uuid.UUID | None, uuid.UUID, str], tuple[int, Warning]] = {}
    for warning in warnings:
        key = (warning.organization_id, warning.token_id, warning.reason)
        count, _ = grouped.get(key, (0, warning))
        grouped[key] = (count + 1, warning)  # the latest one is the sample
    params = [
        (new_id(), w.organization_id, w.token_id, w.reason, w.at.date(), count, w.at, w.at,
         w.message_id, w.error, w.sample)
        for count, w in grouped.values()
    ]  # fmt: skip
    # One order for every writer, so two batches upserting the same keys never deadlock.
    params.sort(key=lambda p: (str(p[1]), str(p[2]), p[3]))

    async def upsert(conn: object) -> None:
        async with conn.transaction(), conn.cursor() as cur:  # type: ignore[attr-defined]
            await cur.executemany(_UPSERT, params)

    try:
        await writer.run(upsert)
    except Exception:
        log.warning("could not record %d ingestion warnings", len(warnings), exc_info=True)
