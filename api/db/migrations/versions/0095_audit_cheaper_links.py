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
  ``organizations`` ran its check query per inserted row (2,000 times for a batch of one org). A
  statement-level trigger beside the link trigger (both read the statement's one transition
  table) now takes the same key lock on each distinct organization the statement names (``FOR KEY SHARE``, what the foreign key
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

# What a foreign key would check per row, once per organization of the statement: the key lock
# first (a concurrent delete then waits for this transaction), then any organization missing. A
# statement-level trigger of its own beside the link trigger (0005), which is left as it is: both
# read the one transition table Postgres captures for the statement.
ORGS_EXIST = f"""
CREATE FUNCTION keel_audit_log_orgs_exist() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER {SEARCH_PATH} AS $$
DECLARE
    missing uuid;
BEGIN
    PERFORM 1 FROM organizations o
    WHERE o.id IN (SELECT DISTINCT n.organization_id FROM new_entries n)
    FOR KEY SHARE OF o;
    SELECT n.organization_id INTO missing
    FROM (SELECT DISTINCT organization_id FROM new_entries WHERE organization_id IS NOT NULL) n
    WHERE NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = n.organization_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit entries name organization %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION keel_audit_log_orgs_exist() FROM PUBLIC;
CREATE TRIGGER audit_log_orgs_exist AFTER INSERT ON audit_log
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_log_orgs_exist();

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

NO_ORGS_EXIST = """
DROP TRIGGER IF EXISTS organizations_keep_audited ON organizations;
DROP FUNCTION IF EXISTS keel_organizations_keep_audited();
DROP TRIGGER IF EXISTS audit_log_orgs_exist ON audit_log;
DROP FUNCTION IF EXISTS keel_audit_log_orgs_exist();
"""


def _collate(collation: str) -> None:
    for table, column, length in BYTE_ORDER_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar({length}) COLLATE {collation}")


def upgrade() -> None:
    _collate('"C"')
    op.drop_constraint(FOREIGN_KEY, "audit_log", type_="foreignkey")
    op.execute(ORGS_EXIST)


def downgrade() -> None:
    op.execute(NO_ORGS_EXIST)
    op.create_foreign_key(FOREIGN_KEY, "audit_log", "organizations", ["organization_id"], ["id"])
    _collate("pg_catalog.default")
