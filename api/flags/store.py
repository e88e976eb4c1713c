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
import uuid

import psycopg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.db.engine import libpq_url
from api.errors import ServiceUnavailable
from api.flags.evaluation import FlagDefinition, FlagSnapshot, Override
from api.flags.models import FeatureFlag, FlagOverride, FlagsVersion

CHANNEL = "keel_flags"
DEFAULT_POLL_INTERVAL = 1.0
#: A database that does not answer within this long is treated as down (the task reconnects).
QUERY_TIMEOUT = 5.0

log = logging.getLogger("keel.flags")


def definition(flag: FeatureFlag) -> FlagDefinition:
    return FlagDefinition(
        key=flag.key, enabled=flag.enabled, archived=flag.archived_at is not None,
        rollout_percentage=flag.rollout_percentage, stickiness=flag.stickiness,
    )  # fmt: skip


async def read_version(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(FlagsVersion.version).where(FlagsVersion.id == 1))).scalar_one())


async def load_snapshot(engine: AsyncEngine) -> FlagSnapshot:
    """Every definition and override, with the version they belong to, from one database snapshot."""
    async with engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            version = await read_version(conn)
            flags = await conn.execute(
                select(
                    FeatureFlag.key, FeatureFlag.enabled, FeatureFlag.archived_at,
                    FeatureFlag.rollout_percentage, FeatureFlag.stickiness,
                ).order_by(FeatureFlag.key)
            )  # fmt: skip
            definitions = {
                key: FlagDefinition(
                    key=key,
                    enabled=enabled,
                    archived=archived_at is not None,
                    rollout_percentage=rollout,
                    stickiness=stickiness,
                )
                for key, enabled, archived_at, rollout, stickiness in flags
            }
            rows = await conn.execute(
                select(
                    FeatureFlag.key, FlagOverride.organization_id, FlagOverride.enabled, FlagOverride.reason
                ).join(FeatureFlag, FeatureFlag.id == FlagOverride.flag_id)
            )
            overrides: dict[str, dict[str, Override]] = {}
            for key, org_id, enabled, reason in rows:
                overrides.setdefault(str(org_id), {})[key] = Override(enabled=enabled, reason=reason)
    return FlagSnapshot(version=version, flags=definitions, overrides=overrides)


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
            except Exception as exc:  # the database is down: keep serving the last snapshot
                log.warning("flags: refresh failed, serving the last snapshot: %s", exc)


def canonical_org_id(org_id: uuid.UUID) -> str:
    """The text a flag hashes for an organization (and the key of its overrides in a snapshot)."""
    return str(org_id)
