"""application role: what needs the owner goes through SECURITY DEFINER functions; pruning trusts no setting

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:45:00.000000

The API, the worker and the flows connect as an application role that owns nothing (its grants
are applied by ``keel db upgrade``: api/db/roles.py). Everything that needs ownership of a table
is a function owned by the schema's owner, ``SECURITY DEFINER`` with a fixed ``search_path``
(``pg_temp`` last, so a session's temporary objects cannot stand in for Keel's), and executable
only by the roles granted it.

Audit entries now leave only inside ``keel_audit_prune``: the delete trigger no longer trusts the
session-settable ``keel.audit_prune`` setting but a mark the function writes in an owner-only
table for its own transaction, and the function refuses entries younger than the retention in
``keel_settings`` (owner-only, written by ``keel db upgrade``) and entries past the export
watermark the exporter records in ``export_progress``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_PATH = "SET search_path = pg_catalog, public, pg_temp"
#: At most this many day partitions per call of keel_ensure_event_partitions (the API asks for 7).
MAX_PARTITION_DAYS = 62

PRUNE = f"""
-- The rule, once: entries of a chain may go only up to the last seq before its first entry that
-- is younger than the retention or not yet in the lake (0: none may go). The application reads
-- it to choose what to prune; keel_audit_prune refuses anything past it.
CREATE FUNCTION keel_audit_prune_limit(p_chain_key text) RETURNS bigint
LANGUAGE sql STABLE {SEARCH_PATH} AS $$
    SELECT COALESCE(
        (SELECT min(a.seq) - 1 FROM audit_log a
         WHERE a.chain_key = p_chain_key
           -- (no retention configured: every entry counts as young)
           AND ((a.recorded_at >= now() - make_interval(days => (SELECT audit_retention_days FROM keel_settings WHERE id = 1))) IS NOT FALSE
                OR a.export_seq > COALESCE((SELECT watermark FROM export_progress WHERE table_name = 'audit_log'), 0))),
        (SELECT max(a.seq) FROM audit_log a WHERE a.chain_key = p_chain_key),
        0)
$$;

CREATE OR REPLACE FUNCTION keel_audit_prune(p_chain_key text, p_through_seq bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    last_entry audit_log%ROWTYPE;
    retention integer;
    held bigint;
    expected bigint;
    removed bigint;
BEGIN
    -- The writers' lock: no append interleaves with a prune of the same chain.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_chain_key, 0));
    SELECT * INTO last_entry FROM audit_log WHERE chain_key = p_chain_key AND seq = p_through_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chain % has no entry %: nothing to prune through', p_chain_key, p_through_seq
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT audit_retention_days INTO retention FROM keel_settings WHERE id = 1;
    IF retention IS NULL THEN
        RAISE EXCEPTION 'the audit retention is not configured: run `keel db upgrade`'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF p_through_seq > keel_audit_prune_limit(p_chain_key) THEN
        SELECT watermark INTO held FROM export_progress WHERE table_name = 'audit_log';
        RAISE EXCEPTION 'chain %: pruning through seq % refused: entries may go only once recorded % days ago or more (KEEL_AUDIT_RETENTION_DAYS) and once the lake holds them (export watermark %); seq % is the limit now',
            p_chain_key, p_through_seq, retention, COALESCE(held, 0), keel_audit_prune_limit(p_chain_key)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT count(*) INTO expected FROM audit_log WHERE chain_key = p_chain_key AND seq <= p_through_seq;
    INSERT INTO audit_checkpoints (chain_key, seq, entry_id, hash, removed)
    VALUES (p_chain_key, p_through_seq, last_entry.id, last_entry.hash, expected);
    INSERT INTO audit_prune_marks (txid, chain_key, through_seq)
    VALUES (txid_current(), p_chain_key, p_through_seq)
    ON CONFLICT (txid) DO UPDATE SET chain_key = EXCLUDED.chain_key, through_seq = EXCLUDED.through_seq;
    DELETE FROM audit_log WHERE chain_key = p_chain_key AND seq <= p_through_seq;
    GET DIAGNOSTICS removed = ROW_COUNT;
    DELETE FROM audit_prune_marks WHERE txid = txid_current();
    RETURN removed;
END;
$$;
REVOKE ALL ON FUNCTION keel_audit_prune(text, bigint) FROM PUBLIC;

-- A row leaves only while keel_audit_prune runs for its chain in this very transaction (the mark
-- lives in a table only the owner can write), and only under a checkpoint that covers it.
CREATE OR REPLACE FUNCTION keel_audit_log_guard_delete() RETURNS trigger LANGUAGE plpgsql {SEARCH_PATH} AS $$
BEGIN
    IF NOT EXISTS (
           SELECT 1 FROM audit_prune_marks m
           WHERE m.txid = txid_current() AND m.chain_key = OLD.chain_key AND OLD.seq <= m.through_seq
       )
       OR NOT EXISTS (
           SELECT 1 FROM audit_checkpoints c WHERE c.chain_key = OLD.chain_key AND c.seq >= OLD.seq
       ) THEN
        RAISE EXCEPTION 'audit_log is append-only: DELETE refused (entries leave only through keel_audit_prune, which records a checkpoint)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END;
$$;

-- The link trigger moves audit_chain_heads, which the application role may only read.
ALTER FUNCTION keel_audit_log_link() SECURITY DEFINER {SEARCH_PATH};
REVOKE ALL ON FUNCTION keel_audit_log_link() FROM PUBLIC;
"""

OLD_PRUNE = """
DROP FUNCTION IF EXISTS keel_audit_prune_limit(text);
CREATE OR REPLACE FUNCTION keel_audit_log_guard_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('keel.audit_prune', true) IS DISTINCT FROM OLD.chain_key
       OR NOT EXISTS (
           SELECT 1 FROM audit_checkpoints c WHERE c.chain_key = OLD.chain_key AND c.seq >= OLD.seq
       ) THEN
        RAISE EXCEPTION 'audit_log is append-only: DELETE refused (entries leave only through keel_audit_prune, which records a checkpoint)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END;
$$;
CREATE OR REPLACE FUNCTION keel_audit_prune(p_chain_key text, p_through_seq bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    last_entry audit_log%ROWTYPE;
    expected bigint;
    removed bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_chain_key, 0));
    SELECT * INTO last_entry FROM audit_log WHERE chain_key = p_chain_key AND seq = p_through_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chain % has no entry %: nothing to prune through', p_chain_key, p_through_seq
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT count(*) INTO expected FROM audit_log WHERE chain_key = p_chain_key AND seq <= p_through_seq;
    INSERT INTO audit_checkpoints (chain_key, seq, entry_id, hash, removed)
    VALUES (p_chain_key, p_through_seq, last_entry.id, last_entry.hash, expected);
    PERFORM set_config('keel.audit_prune', p_chain_key, true);
    DELETE FROM audit_log WHERE chain_key = p_chain_key AND seq <= p_through_seq;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('keel.audit_prune', '', true);
    RETURN removed;
END;
$$;
ALTER FUNCTION keel_audit_log_link() SECURITY INVOKER RESET search_path;
"""

# Partitions are made by the owner (so the owner's functions can later summarize and drop them).
PARTITIONS = f"""
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

-- Retention: a day partition goes (with its dedupe keys) only when the export watermark the
-- exporter recorded covers every row in it. Returns the dedupe keys removed, or NULL when kept.
CREATE FUNCTION keel_drop_event_partition(p_partition text) RETURNS bigint
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

-- The exporter's BRIN summarizing (brin_summarize_new_values needs the index's owner).
CREATE FUNCTION keel_summarize_brin(p_index regclass) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER {SEARCH_PATH} AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_class ic JOIN pg_am am ON am.oid = ic.relam
        WHERE ic.oid = p_index AND ic.relkind = 'i' AND am.amname = 'brin'
          AND ic.relnamespace = 'public'::regnamespace
    ) THEN
        RAISE EXCEPTION '% is not a BRIN index of Keel', p_index USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN brin_summarize_new_values(p_index);
END;
$$;
REVOKE ALL ON FUNCTION keel_summarize_brin(regclass) FROM PUBLIC;
"""

OLD_PARTITIONS = """
DROP FUNCTION IF EXISTS keel_summarize_brin(regclass);
DROP FUNCTION IF EXISTS keel_drop_event_partition(text);
CREATE OR REPLACE FUNCTION keel_ensure_event_partitions(first_day date, days integer) RETURNS integer
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    day date;
    created integer := 0;
    name text;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        day := first_day + i;
        name := 'events_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                name, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC'
            );
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;
ALTER FUNCTION keel_ensure_event_partitions(date, integer) RESET search_path;
GRANT EXECUTE ON FUNCTION keel_ensure_event_partitions(date, integer) TO PUBLIC;
"""


def upgrade() -> None:
    op.create_table(
        "audit_prune_marks",
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("chain_key", sa.String(length=64), nullable=False),
        sa.Column("through_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("txid", name=op.f("pk_audit_prune_marks")),
    )
    op.create_table(
        "keel_settings",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("audit_retention_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_keel_settings_single_row")),
        sa.CheckConstraint(
            "audit_retention_days >= 1", name=op.f("ck_keel_settings_audit_retention_days_positive")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keel_settings")),
    )
    # The default of KEEL_AUDIT_RETENTION_DAYS until `keel db upgrade` writes the configured value.
    op.execute("INSERT INTO keel_settings (id, audit_retention_days) VALUES (1, 365)")
    op.create_table(
        "export_progress",
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("watermark", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("table_name", name=op.f("pk_export_progress")),
    )
    op.execute(PRUNE)
    op.execute(PARTITIONS)


def downgrade() -> None:
    op.execute(OLD_PARTITIONS)
    op.execute(OLD_PRUNE)
    op.drop_table("export_progress")
    op.drop_table("keel_settings")
    op.drop_table("audit_prune_marks")
