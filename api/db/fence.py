"""The export fence: how the exporter knows that no row is still uncommitted behind its watermark.

Every number of an exported append-only table (events, audit entries, billing discrepancies,
webhook attempts) is drawn by the column's default, ``keel_export_nextval(sequence)`` (migration
0010), which first takes this advisory lock *shared* for the rest of the transaction. No writer
takes it by hand, so none can forget it: an insert through the API, a worker, ``psql`` or
``COPY`` holds it from before its number exists until it commits. The exporter takes it
*exclusively* for an instant: once it has it, every transaction that drew a number has ended,
so every row numbered up to the sequence's current value is committed (or rolled back for good).
Rows numbered later belong to transactions that started after, and the next export picks them up.

A writer must therefore leave the numbered column to its default (the models declare it as a
server default only, never a client-side ``Sequence``).
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

EXPORT_FENCE_LOCK = 0x6B65656C_6576  # "keelev"

#: Take the fence shared on a plain psycopg connection (one parameter: the lock), as the
#: numbering default does; for tests that stand in for a writer.
HOLD_SHARED_SQL = "SELECT pg_advisory_xact_lock_shared(%s)"


def fenced_nextval(sequence: str) -> TextClause:
    """The server default of a column the lake exports by: ``sequence``'s next number, drawn
    under the fence (the SQL function is migration 0010's)."""
    return text(f"keel_export_nextval('{sequence}'::regclass)")
