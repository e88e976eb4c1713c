"""events partitions hold their day's dedupe keys: a unique index per partition, event_keys keeps the boundary

Revision ID: 0080
Revises: 0075
Create Date: 2026-12-01 18:00:00.000000

Each ``events_pYYYYMMDD`` gets a unique constraint on (organization_id, message_id) of its own
(partition-local: a unique constraint of the partitioned table would have to include
``received_at``), made with the partition by ``keel_ensure_event_partitions``. The ingest
statement inserts into ``events`` with ``ON CONFLICT DO NOTHING``, which takes the routed
partition's unique index as its arbiter: the same day's dedupe no longer writes a key row beside
every event (a heap tuple, its index entry and the speculative-insert confirmation in a second
table), only the event's own index entry. ``event_keys`` (still one partition per day, made and
dropped with the events partition) now holds only the claims near a day boundary, where two
claims of one key may land on two days' partitions (api/events/store.py).

Upgrading with data in place: every existing events partition gets its constraint (the keys of a
day were unique already: each day's key partition held them; a partition with a duplicate written
around the API, by hand, makes the upgrade fail on that index, naming it). The keys already in
``event_keys`` stay there until their day is dropped: each stands for an event stored, so a claim
that meets one is a duplicate, as before. Downgrading puts every event's key back into
``event_keys``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0080"
down_revision: str | None = "0075"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_PATH = "SET search_path = pg_catalog, public, pg_temp"
MAX_PARTITION_DAYS = 62  # as in 0009

#: Taken by keel_ensure_event_partitions before it creates a partition ("keelpart").
CREATE_LOCK = 0x6B65656C_70617274

#: The constraint's name for a partition name (the naming convention's ``uq_<table>_<columns>``).
KEY_CONSTRAINT = "'uq_' || {name} || '_organization_id_message_id'"

ENSURE = f"""
CREATE OR REPLACE FUNCTION keel_ensure_event_partitions(first_day date, days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    day date;
    created integer := 0;
    name text;
    lo timestamptz;
    hi timestamptz;
BEGIN
    IF days IS NULL OR days < 1 OR days > {MAX_PARTITION_DAYS} OR first_day IS NULL THEN
        RAISE EXCEPTION 'keel_ensure_event_partitions makes 1 to {MAX_PARTITION_DAYS} day partitions, not %', days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 0 .. days - 1 LOOP
        day := first_day + i;
        lo := day::timestamp AT TIME ZONE 'UTC';
        hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
        name := 'events_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass('public.' || name) IS NULL OR to_regclass('public.event_keys_p' || to_char(day, 'YYYYMMDD')) IS NULL THEN
            -- Creators take turns (to the end of the transaction): two creating one partition with
            -- its unique constraint at once deadlock on the parent, where without the constraint
            -- the second failed on the name (and the caller looks again).
            PERFORM pg_advisory_xact_lock({CREATE_LOCK});
        END IF;
        IF to_regclass('public.' || name) IS NULL THEN
            -- The day's dedupe keys: the arbiter of the ingest statement's ON CONFLICT DO NOTHING.
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.events'
                ' (CONSTRAINT %I UNIQUE (organization_id, message_id)) FOR VALUES FROM (%L) TO (%L)',
                name, {KEY_CONSTRAINT.format(name="name")}, lo, hi
            );
            created := created + 1;
        END IF;
        name := 'event_keys_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass('public.' || name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.event_keys'
                ' (CONSTRAINT %I PRIMARY KEY (organization_id, message_id)) FOR VALUES FROM (%L) TO (%L)',
                name, 'pk_' || name, lo, hi
            );
        END IF;
    END LOOP;
    RETURN created;
END;
$$;
REVOKE ALL ON FUNCTION keel_ensure_event_partitions(date, integer) FROM PUBLIC;
"""

#: Every existing events partition gets its day's key constraint.
ADD_KEYS = f"""
DO $$
DECLARE
    part text;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.events'::regclass AND c.relname ~ '^events_p[0-9]{{8}}$'
        ORDER BY c.relname
    LOOP
        EXECUTE format(
            'ALTER TABLE public.%I ADD CONSTRAINT %I UNIQUE (organization_id, message_id)',
            part, {KEY_CONSTRAINT.format(name="part")}
        );
    END LOOP;
END;
$$;
"""

#: Downgrade: every event's key back into event_keys (0075 claims every key there), then the
#: constraints go.
RESTORE_KEYS = f"""
INSERT INTO event_keys (organization_id, message_id, received_at)
SELECT organization_id, message_id, received_at FROM events
ON CONFLICT DO NOTHING;
DO $$
DECLARE
    part text;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.events'::regclass AND c.relname ~ '^events_p[0-9]{{8}}$'
    LOOP
        EXECUTE format(
            'ALTER TABLE public.%I DROP CONSTRAINT IF EXISTS %I', part, {KEY_CONSTRAINT.format(name="part")}
        );
    END LOOP;
END;
$$;
"""


def _revision_0075_ensure() -> str:
    """0075's function, from its own module (the one definition of it)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("0075_event_keys_by_day.py")
    spec = importlib.util.spec_from_file_location("keel_migration_0075", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ensure: str = module.ENSURE
    return ensure


def upgrade() -> None:
    op.execute(ENSURE)
    op.execute(ADD_KEYS)


def downgrade() -> None:
    op.execute(_revision_0075_ensure())
    op.execute(RESTORE_KEYS)
