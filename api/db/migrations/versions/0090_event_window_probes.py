"""events partitions of closed days get a hash index for the dedupe window's probe

Revision ID: 0090
Revises: 0080
Create Date: 2026-12-01 20:30:00.000000

The dedupe window (api/events/store.py) reads the partitions of the days before a statement's for
every key it carries. With only the day's unique btree on (organization_id, message_id), each key
is a descent of that btree (three pages at 667 k keys a day, a dozen ``strcoll`` comparisons of
message ids on the way: the database's collation is C.UTF-8). A day is written only until its
last claims commit, half an hour after midnight at the latest, so a closed day gets a structure
made for the probe: a hash index of the key's 64-bit hash (:data:`KEY_HASH`, the organization's
uuid hash seeding the message id's), one bucket page a key, the bucket's entries compared as
integers. The probe rechecks every row it finds on (organization_id, message_id), so a hash
collision never makes two different keys duplicates; the unique btree stays (the same day's
``ON CONFLICT`` arbiter).

``keel_keep_event_probes(first_day, days)`` (the owner's, run by the application's partition
upkeep every hour) builds the index on each of those days' partitions once the day has been
closed for :data:`CLOSED_AFTER` (a plain ``CREATE INDEX``: it holds a SHARE lock, which blocks
only writes, and a closed day has none; then ``ANALYZE`` of the partition, whose statistics of the
expression tell the planner the hash condition is the selective one), and drops it from the partitions of days before
``first_day``, which no probe reads. Each step gives up after a second's wait for its lock (a long
export reading the partition, say) and is tried again at the next upkeep. The index is only ever
an alternative path: a partition without it is probed through the btree, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0090"
down_revision: str | None = "0080"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_PATH = "SET search_path = pg_catalog, public, pg_temp"
MAX_PARTITION_DAYS = 62  # as in 0009

#: Taken by keel_keep_event_probes for its whole run ("keelprob"): two API processes take turns.
PROBE_LOCK = 0x6B65656C_70726F62

#: The key's hash as the index holds it; api/events/store.py's KEY_HASH is the same expression
#: (tests/test_events_window_probe.py compares them).
KEY_HASH = "hashtextextended(message_id, uuid_hash_extended(organization_id, 0))"

#: How long after its midnight a day's partition counts as closed (claims commit within half an
#: hour of their received_at: api/events/store.py).
CLOSED_AFTER = "1 hour"

KEEP_PROBES = f"""
CREATE OR REPLACE FUNCTION keel_keep_event_probes(first_day date, days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    part record;
    name text;
    built integer := 0;
BEGIN
    IF days IS NULL OR days < 1 OR days > {MAX_PARTITION_DAYS} OR first_day IS NULL THEN
        RAISE EXCEPTION 'keel_keep_event_probes covers 1 to {MAX_PARTITION_DAYS} days, not %', days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock({PROBE_LOCK});
    PERFORM set_config('lock_timeout', '1s', true);
    FOR part IN
        SELECT c.relname AS partition, to_date(substr(c.relname, 9), 'YYYYMMDD') AS day,
               to_regclass('public.ix_' || c.relname || '_key_hash') IS NOT NULL AS probed
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.events'::regclass AND c.relname ~ '^events_p[0-9]{{8}}$'
        ORDER BY c.relname DESC
    LOOP
        name := 'ix_' || part.partition || '_key_hash';
        BEGIN
            IF part.probed AND part.day < first_day THEN
                EXECUTE format('DROP INDEX public.%I', name);
            ELSIF NOT part.probed AND part.day >= first_day AND part.day < first_day + days
                  AND (part.day + 1)::timestamp AT TIME ZONE 'UTC' + interval '{CLOSED_AFTER}' <= now() THEN
                EXECUTE format(
                    'CREATE INDEX %I ON public.%I USING hash (({KEY_HASH}))', name, part.partition
                );
                -- The expression's statistics (every key distinct): without them the planner
                -- guesses the hash condition matches a two-hundredth of the day and keeps the btree.
                EXECUTE format('ANALYZE public.%I', part.partition);
                built := built + 1;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'keel_keep_event_probes: % is busy, left for the next upkeep', part.partition;
        END;
    END LOOP;
    RETURN built;
END;
$$;
REVOKE ALL ON FUNCTION keel_keep_event_probes(date, integer) FROM PUBLIC;
"""

#: Downgrade: the function and every probe index go.
DROP_PROBES = """
DROP FUNCTION IF EXISTS keel_keep_event_probes(date, integer);
DO $$
DECLARE
    ix text;
BEGIN
    FOR ix IN
        SELECT c.relname FROM pg_class c
        WHERE c.relkind = 'i' AND c.relnamespace = 'public'::regnamespace
          AND c.relname ~ '^ix_events_p[0-9]{8}_key_hash$'
    LOOP
        EXECUTE format('DROP INDEX public.%I', ix);
    END LOOP;
END;
$$;
"""


def upgrade() -> None:
    op.execute(KEEP_PROBES)


def downgrade() -> None:
    op.execute(DROP_PROBES)
