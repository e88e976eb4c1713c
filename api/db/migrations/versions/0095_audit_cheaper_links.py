"""audit entries: byte-order keys, and one organization check per insert instead of one per entry

Revision ID: 0095
Revises: 0090
Create Date: 2026-12-02 02:30:00.000000

One chain's appends are serialized behind its lock, so the cost of one batch's insert in Postgres
bounds one organization's append rate (issue 18: 20,000 entries/s). ``EXPLAIN (ANALYZE, BUFFERS,
WAL)`` and the backend's CPU of a 2,000-entry insert (bench/bench_audit.py's docstring) found two
costs that buy nothing a collation or a per-row check is needed for:

- **Byte order for the keys.** ``chain_key`` (an organization's id as text, or ``platform``) and the
  columns of the "who did what to this" indexes (``actor_id``, ``resource_type``, ``resource_id``)
  took the database's collation, C.UTF-8, which Postgres 16 compares through ``strcoll`` and
  without abbreviated keys: every index descent of every entry paid it. These are identifiers,
  looked up by equality and ordered nowhere a reader sees a language's order, so they now compare
  as bytes (``COLLATE "C"``; for UTF-8, byte order is code point order, what C.UTF-8 gave). Every
  table's ``chain_key`` takes it, so the joins between them (the link trigger's, ``verify``'s)
  still use each other's indexes.
- **The organization checked once per statement.** The foreign key from ``audit_log`` to
  ``organizations`` ran its check query per inserted row (2,000 times for a batch of one org). The
  link trigger, which already runs once per statement over the new rows, now takes the same key
  lock on each distinct organization the statement names (``FOR KEY SHARE``, what the foreign key
  took) and refuses the statement if one does not exist, with the foreign key's error code; and
  ``organizations`` refuses to delete (or re-key) an organization that has entries, which the
  foreign key did too. The guarantee is the foreign key's: an entry never names a missing
  organization, and an organization with entries stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0095"
down_revision: str | None = "0090"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_PATH = "SET search_path = pg_catalog, public, pg_temp"  # as in 0009

#: (table, column, length) of every key column that now compares as bytes.
BYTE_ORDER_COLUMNS = (
    ("audit_log", "chain_key", 64),
    ("audit_log", "actor_id", 255),
    ("audit_log", "resource_type", 100),
    ("audit_log", "resource_id", 255),
    ("audit_chain_heads", "chain_key", 64),
    ("audit_checkpoints", "chain_key", 64),
    ("audit_prune_marks", "chain_key", 64),
    ("audit_signed_checkpoints", "chain_key", 64),
)
FOREIGN_KEY = "fk_audit_log_organization_id_organizations"

# The body of 0005's link check, with the organization check ahead of it.
LINK = f"""
CREATE OR REPLACE FUNCTION keel_audit_log_link() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    bad record;
BEGIN
    -- What a foreign key would check per row, once per organization of the statement: the key
    -- lock first (a concurrent delete waits for this transaction), then any organization missing.
    PERFORM 1 FROM organizations o
    WHERE o.id IN (SELECT DISTINCT n.organization_id FROM new_entries n)
    FOR KEY SHARE OF o;
    SELECT n.organization_id INTO bad
    FROM (SELECT DISTINCT organization_id FROM new_entries WHERE organization_id IS NOT NULL) n
    WHERE NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = n.organization_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit entries name organization %, which does not exist', bad.organization_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    WITH batch AS (
        SELECT n.chain_key, n.seq, n.id, n.prev_hash,
               lag(n.seq) OVER w AS prior_seq, lag(n.hash) OVER w AS prior_hash
        FROM new_entries n
        WINDOW w AS (PARTITION BY n.chain_key ORDER BY n.seq)
    )
    SELECT b.chain_key, b.seq, b.id INTO bad
    FROM batch b LEFT JOIN audit_chain_heads h ON h.chain_key = b.chain_key
    WHERE b.seq <> COALESCE(b.prior_seq, h.seq, 0) + 1
       OR b.prev_hash <> COALESCE(b.prior_hash, h.hash, repeat('0', 64))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit entry % (chain %, seq %) does not extend its chain head', bad.id, bad.chain_key, bad.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    INSERT INTO audit_chain_heads (chain_key, seq, entry_id, hash)
    SELECT DISTINCT ON (chain_key) chain_key, seq, id, hash FROM new_entries ORDER BY chain_key, seq DESC
    ON CONFLICT (chain_key) DO UPDATE
        SET seq = EXCLUDED.seq, entry_id = EXCLUDED.entry_id, hash = EXCLUDED.hash;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION keel_audit_log_link() FROM PUBLIC;

CREATE FUNCTION keel_organizations_keep_audited() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER {SEARCH_PATH} AS $$
BEGIN
    IF (TG_OP = 'DELETE' OR NEW.id IS DISTINCT FROM OLD.id)
       AND EXISTS (SELECT 1 FROM audit_log a WHERE a.organization_id = OLD.id) THEN
        RAISE EXCEPTION 'organization % has audit entries: it cannot be deleted or given another id', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END;
$$;
REVOKE ALL ON FUNCTION keel_organizations_keep_audited() FROM PUBLIC;
CREATE TRIGGER organizations_keep_audited BEFORE DELETE OR UPDATE OF id ON organizations
    FOR EACH ROW EXECUTE FUNCTION keel_organizations_keep_audited();
"""

OLD_LINK = f"""
DROP TRIGGER IF EXISTS organizations_keep_audited ON organizations;
DROP FUNCTION IF EXISTS keel_organizations_keep_audited();
CREATE OR REPLACE FUNCTION keel_audit_log_link() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    bad record;
BEGIN
    WITH batch AS (
        SELECT n.chain_key, n.seq, n.id, n.prev_hash,
               lag(n.seq) OVER w AS prior_seq, lag(n.hash) OVER w AS prior_hash
        FROM new_entries n
        WINDOW w AS (PARTITION BY n.chain_key ORDER BY n.seq)
    )
    SELECT b.chain_key, b.seq, b.id INTO bad
    FROM batch b LEFT JOIN audit_chain_heads h ON h.chain_key = b.chain_key
    WHERE b.seq <> COALESCE(b.prior_seq, h.seq, 0) + 1
       OR b.prev_hash <> COALESCE(b.prior_hash, h.hash, repeat('0', 64))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit entry % (chain %, seq %) does not extend its chain head', bad.id, bad.chain_key, bad.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    INSERT INTO audit_chain_heads (chain_key, seq, entry_id, hash)
    SELECT DISTINCT ON (chain_key) chain_key, seq, id, hash FROM new_entries ORDER BY chain_key, seq DESC
    ON CONFLICT (chain_key) DO UPDATE
        SET seq = EXCLUDED.seq, entry_id = EXCLUDED.entry_id, hash = EXCLUDED.hash;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION keel_audit_log_link() FROM PUBLIC;
"""


def _collate(collation: str) -> None:
    for table, column, length in BYTE_ORDER_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar({length}) COLLATE {collation}")


def upgrade() -> None:
    _collate('"C"')
    op.drop_constraint(FOREIGN_KEY, "audit_log", type_="foreignkey")
    op.execute(LINK)


def downgrade() -> None:
    op.execute(OLD_LINK)
    op.create_foreign_key(FOREIGN_KEY, "audit_log", "organizations", ["organization_id"], ["id"])
    _collate("pg_catalog.default")
