"""The export fence: how the exporter knows that no row is still uncommitted behind its watermark.

Writers of append-only, exported tables (events, audit entries, billing discrepancies, webhook
attempts) draw a number from their table's sequence inside a transaction that holds this
advisory lock *shared*. The exporter takes
it *exclusively* for an instant: once it has it, every transaction that drew a number has ended,
so every row numbered up to the sequence's current value is committed (or rolled back for good).
Rows numbered later belong to transactions that started after, and the next export picks them up.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

EXPORT_FENCE_LOCK = 0x6B65656C_6576  # "keelev"

#: The same, for writers on a plain psycopg connection (one parameter: the lock).
HOLD_SHARED_SQL = "SELECT pg_advisory_xact_lock_shared(%s)"

HOLD_SHARED = text("SELECT pg_advisory_xact_lock_shared(:k)").bindparams(k=EXPORT_FENCE_LOCK)


async def hold_shared(session: Any) -> None:
    """Hold the fence (shared) until the end of the session's transaction."""
    await session.execute(HOLD_SHARED)
