"""The in-process copy of every flag definition and override, kept fresh by LISTEN/NOTIFY and a poll.

Each API process holds one :class:`FlagStore`. Evaluation reads its current :class:`FlagSnapshot`
(no database round trip); a background task replaces the snapshot when ``flags_version`` moves.

Freshness: every change bumps ``flags_version`` and sends ``NOTIFY keel_flags`` in its own
transaction (triggers of migration 0004). The task waits on that channel for at most
``poll_interval`` seconds, then compares the stored version with its own either way, so a missed
notification (a dropped listen connection, a restart of Postgres) costs at most one poll interval.
Definitions and the version are read in one REPEATABLE READ transaction, so a snapshot never
mixes two versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from api.billing.models import Subscription
from api.billing.services import CURRENT_FIRST
from api.db.engine import libpq_url
from api.errors import ServiceUnavailable
from api.flags.evaluation import FlagDefinition, FlagSnapshot, Override
from api.flags.models import FeatureFlag, FlagEvaluationMark, FlagOverride, FlagSegment, FlagsVersion
from api.flags.rules import definition_of
from api.flags.targeting import Facts, as_text, org_fields
from api.orgs.models import Organization

if TYPE_CHECKING:
    from api.flags.ofrep import BulkAnswer

CHANNEL = "keel_flags"
DEFAULT_POLL_INTERVAL = 1.0
#: A database that does not answer within this long is treated as down (the task reconnects).
QUERY_TIMEOUT = 5.0

#: How long an organization's facts (plan, status, seats, traits…) are reused: a subscription or
#: trait change reaches rules within this long (the same bound as the membership cache).
FACTS_TTL = 2.0
#: Evaluation marks (for stale flags) are written at most this often per process.
MARK_INTERVAL = 60.0

log = logging.getLogger("keel.flags")

Segments = Mapping[str, Sequence[Mapping[str, Any]]]


def definition(flag: FeatureFlag, segments: Segments) -> FlagDefinition:
    return definition_of(
        key=flag.key, enabled=flag.enabled, archived_at=flag.archived_at,
        rollout_percentage=flag.rollout_percentage, stickiness=flag.stickiness, rules=flag.rules,
        variants=flag.variants, segments=segments,
    )  # fmt: skip


async def read_segments(conn: AsyncConnection | AsyncSession) -> dict[str, list[dict[str, Any]]]:
    rows = await conn.execute(select(FlagSegment.name, FlagSegment.constraints))
    return {name: list(constraints) for name, constraints in rows}


async def org_facts(
    conn: AsyncConnection | AsyncSession, org_id: uuid.UUID
) -> tuple[dict[str, str], dict[str, Any]]:
    """The ``org.*`` fields Keel resolves (as text) and the org's traits, read fresh.

    Plan, status and seats are the current subscription's (``CURRENT_FIRST``: warehouse.rules'
    one definition); an org without a subscription has none of them (missing, for Unleash).
    """
    org = (
        await conn.execute(
            select(Organization.external_id, Organization.created_at, Organization.traits).where(
                Organization.id == org_id
            )
        )
    ).first()
    if org is None:
        return {}, {}
    sub = (
        await conn.execute(
            select(Subscription.plan, Subscription.status, Subscription.seats)
            .where(Subscription.organization_id == org_id)
            .order_by(CURRENT_FIRST)
            .limit(1)
        )
    ).first()
    raw: dict[str, Any] = {"org.external_id": org.external_id, "org.created_at": org.created_at}
    if sub is not None:
        raw |= {"org.plan": sub.plan, "org.subscription_status": sub.status.value, "org.seats": sub.seats}
    fields = {name: text for name, value in raw.items() if (text := as_text(value)) is not None}
    return fields, dict(org.traits or {})


async def read_version(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(FlagsVersion.version).where(FlagsVersion.id == 1))).scalar_one())


async def load_snapshot(engine: AsyncEngine) -> FlagSnapshot:
    """Every definition and override, with the version they belong to, from one database snapshot."""
    async with engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            version = await read_version(conn)
            segments = await read_segments(conn)
            flags = await conn.execute(
                select(
                    FeatureFlag.key, FeatureFlag.enabled, FeatureFlag.archived_at,
                    FeatureFlag.rollout_percentage, FeatureFlag.stickiness, FeatureFlag.rules,
                    FeatureFlag.variants,
                ).order_by(FeatureFlag.key)
            )  # fmt: skip
            definitions: dict[str, FlagDefinition] = {
                key: definition_of(
                    key=key,
                    enabled=enabled,
                    archived_at=archived_at,
                    rollout_percentage=rollout,
                    stickiness=stickiness,
                    rules=rules,
                    variants=variants,
                    segments=segments,
                )
                for key, enabled, archived_at, rollout, stickiness, rules, variants in flags
            }
            rows = await conn.execute(
                select(
                    FeatureFlag.key, FlagOverride.organization_id, FlagOverride.enabled, FlagOverride.reason,
                    FlagOverride.variant,
                ).join(FeatureFlag, FeatureFlag.id == FlagOverride.flag_id)
            )  # fmt: skip
            overrides: dict[str, dict[str, Override]] = {}
            for key, org_id, enabled, reason, variant in rows:
                overrides.setdefault(str(org_id), {})[key] = Override(
                    enabled=enabled, reason=reason, variant=variant
                )
    # Making a snapshot compiles its answer map (api/flags/compiled.py): milliseconds for tens of
    # flags, longer for thousands, so off the event loop.
    return await asyncio.to_thread(FlagSnapshot, version=version, flags=definitions, overrides=overrides)


class FlagStore:
    """One process's copy of the flags. ``start`` loads it and keeps it fresh until ``stop``."""

    def __init__(
        self, engine: AsyncEngine, database_url: str, *, poll_interval: float = DEFAULT_POLL_INTERVAL
    ) -> None:
        self.engine = engine
        self.listen_url = libpq_url(database_url)
        self.poll_interval = poll_interval
        self._snapshot: FlagSnapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._listener: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._facts: dict[str, tuple[float, dict[str, str], dict[str, Any], dict[str, str]]] = {}
        #: OFREP bulk bodies and ETags by (version, org, facts, context) (``api/flags/ofrep.py``).
        self.bulk_answers: dict[bytes, BulkAnswer] = {}
        #: Flags evaluated since the last write of the marks (stale-flag detection).
        self._evaluated: set[str] = set()
        self._marked_at = 0.0

    async def facts(
        self, org_id: str, *, user_id: str | None = None, context: Mapping[str, Any] | None = None
    ) -> Facts:
        """The facts rules read for one evaluation: the org's (cached :data:`FACTS_TTL` seconds,
        read only when some flag has a rule) and the caller's own."""
        context = context or {}
        if not self.snapshot.needs_org_facts:
            return Facts(org_id=org_id, user_id=user_id, context=context)
        now = time.monotonic()
        cached = self._facts.get(org_id)
        if cached is None or cached[0] < now:
            async with self.engine.connect() as conn:
                fields, traits = await org_facts(conn, uuid.UUID(org_id))
            if len(self._facts) > 100_000:
                self._facts.clear()
            cached = (now + FACTS_TTL, fields, traits, org_fields(org_id, fields, traits))
            self._facts[org_id] = cached
        return Facts(
            org_id=org_id,
            user_id=user_id,
            org=cached[1],
            traits=cached[2],
            context=context,
            org_flat=cached[3],
        )

    def mark_evaluated(self, keys: Sequence[str] | None = None) -> None:
        """Remember that these flags (all, when ``None``) were just evaluated."""
        if keys is None:
            flags = self.snapshot.flags
            if len(self._evaluated) < len(flags):
                self._evaluated.update(flags)
        else:
            self._evaluated.update(keys)

    async def write_marks(self, *, force: bool = False) -> int:
        """Store the evaluation marks gathered since the last write (at most once a minute)."""
        now = time.monotonic()
        if not self._evaluated or (not force and now - self._marked_at < MARK_INTERVAL):
            return 0
        keys, self._evaluated = sorted(self._evaluated), set()
        self._marked_at = now
        at = datetime.now(UTC)
        statement = insert(FlagEvaluationMark).values(
            [{"flag_key": k, "last_evaluated_at": at} for k in keys]
        )
        statement = statement.on_conflict_do_update(
            index_elements=[FlagEvaluationMark.flag_key], set_={"last_evaluated_at": at}
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement)
        return len(keys)

    @property
    def snapshot(self) -> FlagSnapshot:
        """The current snapshot; 503 until the first load has succeeded (the database was down)."""
        if self._snapshot is None:
            raise ServiceUnavailable("feature flags are not loaded yet: the database is unavailable")
        return self._snapshot

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    @property
    def listener_pid(self) -> int | None:
        """The Postgres backend of the LISTEN connection, while there is one (for diagnostics)."""
        return self._listener.info.backend_pid if self._listener is not None else None

    async def refresh(self) -> bool:
        """Reload when the stored version differs from ours; return whether the snapshot changed."""
        async with asyncio.timeout(QUERY_TIMEOUT):
            if self._snapshot is not None:
                async with self.engine.connect() as conn:
                    if await read_version(conn) == self._snapshot.version:
                        return False
            snapshot = await load_snapshot(self.engine)
        if self._snapshot is None or snapshot.version != self._snapshot.version:
            self._snapshot = snapshot
            return True
        return False

    async def start(self) -> None:
        """Load once (a failure is logged, not raised: the task keeps trying) and start the task."""
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("flags: first load failed, retrying in the background: %s", exc)
        self._task = asyncio.create_task(self._run(), name="keel-flags-refresh")

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.write_marks(force=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_listener()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def _wait_for_change(self) -> None:
        """Return at the first notification, or after ``poll_interval`` seconds without one."""
        if self._listener is None:
            async with asyncio.timeout(QUERY_TIMEOUT):
                self._listener = await psycopg.AsyncConnection.connect(self.listen_url, autocommit=True)
                await self._listener.execute(f"LISTEN {CHANNEL}")
            return  # changes made before LISTEN took effect are caught by the refresh that follows
        async for _notify in self._listener.notifies(timeout=self.poll_interval, stop_after=1):
            pass

    async def _run(self) -> None:
        while True:
            try:
                await self._wait_for_change()
            except Exception as exc:  # whatever broke the listener, the poll below carries on
                log.warning("flags: listen connection lost, polling until it is back: %s", exc)
                await self._close_listener()
                await asyncio.sleep(self.poll_interval)
            try:
                if await self.refresh():
                    assert self._snapshot is not None
                    log.info("flags: refreshed", extra={"fields": {"flags_version": self._snapshot.version}})
                await self.write_marks()
            except Exception as exc:  # the database is down: keep serving the last snapshot
                log.warning("flags: refresh failed, serving the last snapshot: %s", exc)


def canonical_org_id(org_id: uuid.UUID) -> str:
    """The text a flag hashes for an organization (and the key of its overrides in a snapshot)."""
    return str(org_id)
