"""Retention: raw events leave Postgres only after the lake holds them.

A day partition older than the retention window is dropped when every row in it is at or below
the lake's export watermark; its dedupe keys go with it. A partition not yet exported is kept
and reported, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg

from api.db.engine import libpq_url
from pipelines.lake import Lake
from pipelines.tasks.export import EVENTS, read_watermark


@dataclass
class RetentionResult:
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    keys_removed: int = 0


def _partition_day(name: str) -> date | None:
    try:
        return datetime.strptime(name.removeprefix("events_p"), "%Y%m%d").date()
    except ValueError:
        return None


def prune_events(
    database_url: str, lake: Lake, *, retention_days: int, today: date | None = None
) -> RetentionResult:
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=retention_days)
    watermark = read_watermark(lake, EVENTS.name)
    result = RetentionResult()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        partitions = [
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'events'::regclass ORDER BY c.relname"
            )
        ]
        for name in partitions:
            day = _partition_day(name)
            if day is None or day >= cutoff:
                continue
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            # Through the parent (the application role has no grant on a partition itself).
            newest = conn.execute(
                "SELECT max(ingest_seq) FROM events WHERE received_at >= %s AND received_at < %s",
                (start, start + timedelta(days=1)),
            ).fetchone()[0]  # type: ignore[index]
            if newest is not None and newest > watermark:
                result.kept.append(name)
                continue
            # The owner's function drops it, and only if the export Postgres knows of covers it.
            removed = conn.execute("SELECT keel_drop_event_partition(%s)", (name,)).fetchone()[0]  # type: ignore[index]
            if removed is None:
                result.kept.append(name)
                continue
            result.keys_removed += removed
            result.dropped.append(name)
    return result


@dataclass
class AuditRetentionResult:
    chains: int = 0
    removed: int = 0
    checkpoints: dict[str, int] = field(default_factory=dict)


def prune_audit_log(
    database_url: str,
    lake: Lake,
    *,
    retention_days: int,
    now: datetime | None = None,
    chain_keys: set[str] | None = None,
) -> AuditRetentionResult:
    """Remove audit entries older than the retention window, only those the lake already holds.

    Each chain is pruned through ``api.audit.services.prune_audit`` (the privileged path that
    records a checkpoint), with its limit pulled back to the oldest entry this lake does not hold
    (Postgres itself refuses entries younger than its configured retention, or past the export
    it has recorded).
    """
    from sqlalchemy import func, select
    from sqlalchemy.ext.asyncio import AsyncEngine

    from api.audit.models import AuditEntry
    from api.audit.services import prune_audit
    from api.db.engine import make_sessionmaker, run_with_engine
    from pipelines.tasks.export import AUDIT_LOG

    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    watermark = read_watermark(lake, AUDIT_LOG.name)
    result = AuditRetentionResult()

    async def run(engine: AsyncEngine) -> None:
        sessions = make_sessionmaker(engine)
        async with sessions() as session:
            chains = (
                await session.execute(
                    select(AuditEntry.chain_key, func.min(AuditEntry.recorded_at))
                    .where(AuditEntry.recorded_at < cutoff)
                    .group_by(AuditEntry.chain_key)
                )
            ).all()
        for chain_key, _ in chains:
            if chain_keys is not None and chain_key not in chain_keys:
                continue
            async with sessions() as session, session.begin():
                unexported = await session.scalar(
                    select(func.min(AuditEntry.recorded_at)).where(
                        AuditEntry.chain_key == chain_key, AuditEntry.export_seq > watermark
                    )
                )
                before = min(cutoff, unexported) if unexported is not None else cutoff
                pruned = await prune_audit(session, chain_key=chain_key, before=before)
            result.chains += 1
            result.removed += pruned.removed
            if pruned.through_seq is not None:
                result.checkpoints[chain_key] = pruned.through_seq

    run_with_engine(database_url, run, pool_size=1)
    return result


def purge_ingestion_warnings(database_url: str, *, now: datetime | None = None) -> int:
    """Forget ingestion warnings last seen more than ``RETENTION`` (30 days) ago (documented in
    docs/api.md; they are a debugging aid, not a record, and never reach the lake)."""
    from api.ingestion.warnings import RETENTION

    cutoff = (now or datetime.now(UTC)) - RETENTION
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        return conn.execute("DELETE FROM ingestion_warnings WHERE last_seen_at <= %s", (cutoff,)).rowcount


def purge_idempotency_keys(database_url: str, *, now: datetime | None = None) -> int:
    """Forget the saved answers of ``POST /v1/audit-logs`` once their replay window has passed
    (a key is only ever honoured for ``IDEMPOTENCY_TTL``; an expired one is dead weight)."""
    from api.audit.ingest import IDEMPOTENCY_TTL

    cutoff = (now or datetime.now(UTC)) - IDEMPOTENCY_TTL
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        return conn.execute("DELETE FROM audit_idempotency_keys WHERE created_at <= %s", (cutoff,)).rowcount
