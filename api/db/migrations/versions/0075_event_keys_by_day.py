"""event keys: one partition per received day beside each events partition

Revision ID: 0075
Revises: 0071
Create Date: 2026-12-01 15:30:00.000000

One global index of (organization, message_id) held every key of the retention (30 days at 10
million events a day is 300 million keys): random message ids touch a random page of it per key,
so once the index outgrew memory every claim read a page, evicted another and, after each
checkpoint, wrote the whole page into the WAL. Now ``event_keys`` is partitioned by received day
like ``events``: ``event_keys_pYYYYMMDD`` (its own primary key) is made with ``events_pYYYYMMDD`` by
``keel_ensure_event_partitions`` and dropped with it by ``keel_drop_event_partition``, so the index
a claim writes holds one day. Replays of earlier days are found by reading the partitions of the
dedupe window (``KEEL_EVENTS_DEDUPE_DAYS``; api/events/store.py says how the day boundary stays
exact).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0075"
down_revision: str | None = "0071"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_PATH = "SET search_path = pg_catalog, public, pg_temp"
MAX_PARTITION_DAYS = 62  # as in 0009

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
        IF to_regclass('public.' || name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.events FOR VALUES FROM (%L) TO (%L)',
                name, lo, hi
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

DROP_PARTITION = f"""
-- Retention: a day partition goes (with its day of dedupe keys) only when the export watermark
-- the exporter recorded covers every row in it. Returns the dedupe keys removed, or NULL when kept.
CREATE OR REPLACE FUNCTION keel_drop_event_partition(p_partition text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    newest bigint;
    held bigint;
    removed bigint := 0;
    keys text;
BEGIN
    IF p_partition !~ '^events_p[0-9]{{8}}$' OR NOT EXISTS (
        SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.events'::regclass AND c.relname = p_partition
          AND c.relnamespace = 'public'::regnamespace
    ) THEN
        RAISE EXCEPTION '% is not a partition of events', p_partition USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('SELECT max(ingest_seq) FROM public.%I', p_partition) INTO newest;
    SELECT watermark INTO held FROM export_progress WHERE table_name = 'events';
    IF newest IS NOT NULL AND newest > COALESCE(held, 0) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('DROP TABLE public.%I', p_partition);
    keys := 'event_keys_p' || substr(p_partition, 9);
    IF to_regclass('public.' || keys) IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM public.%I', keys) INTO removed;
        EXECUTE format('DROP TABLE public.%I', keys);
    END IF;
    RETURN removed;
END;
$$;
REVOKE ALL ON FUNCTION keel_drop_event_partition(text) FROM PUBLIC;
"""

OLD_ENSURE = f"""
CREATE OR REPLACE FUNCTION keel_ensure_event_partitions(first_day date, days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    day date;
    created integer := 0;
    name text;
BEGIN
    IF days IS NULL OR days < 1 OR days > {MAX_PARTITION_DAYS} OR first_day IS NULL THEN
        RAISE EXCEPTION 'keel_ensure_event_partitions makes 1 to {MAX_PARTITION_DAYS} day partitions, not %', days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 0 .. days - 1 LOOP
        day := first_day + i;
        name := 'events_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.events FOR VALUES FROM (%L) TO (%L)',
                name, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC'
            );
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;
REVOKE ALL ON FUNCTION keel_ensure_event_partitions(date, integer) FROM PUBLIC;
"""

OLD_DROP_PARTITION = f"""
CREATE OR REPLACE FUNCTION keel_drop_event_partition(p_partition text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    day date;
    newest bigint;
    held bigint;
    removed bigint;
BEGIN
    IF p_partition !~ '^events_p[0-9]{{8}}$' OR NOT EXISTS (
        SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.events'::regclass AND c.relname = p_partition
          AND c.relnamespace = 'public'::regnamespace
    ) THEN
        RAISE EXCEPTION '% is not a partition of events', p_partition USING ERRCODE = 'invalid_parameter_value';
    END IF;
    day := to_date(substr(p_partition, 9), 'YYYYMMDD');
    EXECUTE format('SELECT max(ingest_seq) FROM public.%I', p_partition) INTO newest;
    SELECT watermark INTO held FROM export_progress WHERE table_name = 'events';
    IF newest IS NOT NULL AND newest > COALESCE(held, 0) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('DROP TABLE public.%I', p_partition);
    DELETE FROM event_keys
    WHERE received_at >= day::timestamp AT TIME ZONE 'UTC' AND received_at < (day + 1)::timestamp AT TIME ZONE 'UTC';
    GET DIAGNOSTICS removed = ROW_COUNT;
    RETURN removed;
END;
$$;
REVOKE ALL ON FUNCTION keel_drop_event_partition(text) FROM PUBLIC;
"""

#: Every day that has an events partition or a key gets its key partition, then the keys move.
MOVE_KEYS = """
DO $$
DECLARE
    d date;
BEGIN
    FOR d IN
        SELECT to_date(substr(c.relname, 9), 'YYYYMMDD') FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.events'::regclass AND c.relname ~ '^events_p[0-9]{8}$'
        UNION
        SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date FROM event_keys_unpartitioned
    LOOP
        PERFORM keel_ensure_event_partitions(d, 1);
    END LOOP;
END;
$$;
INSERT INTO event_keys (organization_id, message_id, received_at)
SELECT organization_id, message_id, received_at FROM event_keys_unpartitioned;
DROP TABLE event_keys_unpartitioned;
"""


def upgrade() -> None:
    op.execute("ALTER TABLE event_keys RENAME TO event_keys_unpartitioned")
    op.execute(
        "ALTER TABLE event_keys_unpartitioned RENAME CONSTRAINT pk_event_keys TO pk_event_keys_unpartitioned"
    )
    op.execute("DROP INDEX ix_event_keys_received_at_brin")
    op.execute(
        "CREATE TABLE event_keys (organization_id uuid NOT NULL, message_id varchar(128) NOT NULL,"
        " received_at timestamptz NOT NULL) PARTITION BY RANGE (received_at)"
    )
    op.execute(ENSURE)
    op.execute(DROP_PARTITION)
    op.execute(MOVE_KEYS)


def downgrade() -> None:
    op.execute(OLD_DROP_PARTITION)
    op.execute(OLD_ENSURE)
    op.execute("ALTER TABLE event_keys RENAME TO event_keys_by_day")
    op.execute(
        "CREATE TABLE event_keys (organization_id uuid NOT NULL, message_id varchar(128) NOT NULL,"
        " received_at timestamptz NOT NULL, CONSTRAINT pk_event_keys PRIMARY KEY (organization_id, message_id))"
    )
    op.execute("CREATE INDEX ix_event_keys_received_at_brin ON event_keys USING brin (received_at)")
    # A key held on two days (the day-boundary copy, api/events/store.py) keeps its first day.
    op.execute(
        "INSERT INTO event_keys SELECT DISTINCT ON (organization_id, message_id) organization_id, message_id,"
        " received_at FROM event_keys_by_day ORDER BY organization_id, message_id, received_at"
    )
    op.execute("DROP TABLE event_keys_by_day")
