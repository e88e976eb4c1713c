"""audit log: product entries, chain heads, pruning through checkpoints, idempotency keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 06:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every insert must extend its chain by exactly one link: the seq after the head, carrying the
# head's hash. A statement-level trigger sees a whole COPY at once, so bulk loads stay fast.
# It also moves the head, which is what makes removing entries from the end of a chain evident.
CHAIN_LINK = """
CREATE FUNCTION keel_audit_log_link() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE TRIGGER audit_log_link AFTER INSERT ON audit_log
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_log_link();
"""

# A head only moves forward, and never goes away.
HEAD_GUARD = """
CREATE FUNCTION keel_audit_chain_heads_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.chain_key = OLD.chain_key AND NEW.seq > OLD.seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_chain_heads only move forward: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_chain_heads_forward BEFORE UPDATE OR DELETE ON audit_chain_heads
    FOR EACH ROW EXECUTE FUNCTION keel_audit_chain_heads_guard();
CREATE TRIGGER audit_chain_heads_no_truncate BEFORE TRUNCATE ON audit_chain_heads
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_chain_heads_guard();
"""

# A checkpoint must name a real entry, with its real hash, past the chain's previous checkpoint;
# once written it never changes.
CHECKPOINT_GUARD = """
CREATE FUNCTION keel_audit_checkpoints_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'audit_checkpoints is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM audit_log a
        WHERE a.chain_key = NEW.chain_key AND a.seq = NEW.seq AND a.id = NEW.entry_id AND a.hash = NEW.hash
    ) THEN
        RAISE EXCEPTION 'audit checkpoint (chain %, seq %) does not match an entry of the chain', NEW.chain_key, NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM audit_checkpoints c WHERE c.chain_key = NEW.chain_key AND c.seq >= NEW.seq) THEN
        RAISE EXCEPTION 'audit checkpoint (chain %, seq %) is not past the previous one', NEW.chain_key, NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_checkpoints_insert_only BEFORE INSERT OR UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION keel_audit_checkpoints_guard();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_checkpoints_guard();
"""

# DELETE on audit_log is refused unless (1) keel_audit_prune is running for that chain (a
# transaction-local setting it sets and clears) and (2) a recorded checkpoint covers the entry.
# (1) keeps honest code from deleting by mistake; (2) is what holds against anyone who can set
# a setting: no entry leaves without a checkpoint, valid by the trigger above, that says so.
PRUNE = """
DROP TRIGGER audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION keel_audit_log_refuse_change();

CREATE FUNCTION keel_audit_log_guard_delete() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE TRIGGER audit_log_prune_only BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION keel_audit_log_guard_delete();

CREATE FUNCTION keel_audit_prune(p_chain_key text, p_through_seq bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    last_entry audit_log%ROWTYPE;
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
-- Only the owner runs it unless granted: GRANT EXECUTE to the role the retention flow uses.
REVOKE ALL ON FUNCTION keel_audit_prune(text, bigint) FROM PUBLIC;
"""

UNDO_PRUNE = """
DROP FUNCTION IF EXISTS keel_audit_prune(text, bigint);
DROP TRIGGER IF EXISTS audit_log_prune_only ON audit_log;
DROP FUNCTION IF EXISTS keel_audit_log_guard_delete();
DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION keel_audit_log_refuse_change();
"""


def upgrade() -> None:
    op.add_column(
        "audit_log",
        sa.Column(
            "source",
            sa.Enum(
                "keel", "product", name="audit_source", native_enum=False, create_constraint=True, length=32
            ),
            server_default="keel",
            nullable=False,
        ),
    )
    op.add_column(
        "audit_log",
        sa.Column(
            "targets", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'"), nullable=False
        ),
    )
    op.create_index(
        "ix_audit_log_chain_key_resource",
        "audit_log",
        ["chain_key", "resource_type", "resource_id", "seq"],
        unique=False,
    )
    op.create_index(
        "ix_audit_log_chain_key_actor_id", "audit_log", ["chain_key", "actor_id", "seq"], unique=False
    )
    op.create_table(
        "audit_chain_heads",
        sa.Column("chain_key", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain_key", name=op.f("pk_audit_chain_heads")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("chain_key", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.Uuid(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("removed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("chain_key", "seq", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_idempotency_keys",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_audit_idempotency_keys_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "key", name=op.f("pk_audit_idempotency_keys")),
    )
    op.create_index(
        "ix_audit_idempotency_keys_created_at", "audit_idempotency_keys", ["created_at"], unique=False
    )
    # Chains written before this migration get their heads now, before the trigger guards them.
    op.execute(
        "INSERT INTO audit_chain_heads (chain_key, seq, entry_id, hash)"
        " SELECT DISTINCT ON (chain_key) chain_key, seq, id, hash FROM audit_log ORDER BY chain_key, seq DESC"
    )
    op.execute(HEAD_GUARD)
    op.execute(CHAIN_LINK)
    op.execute(CHECKPOINT_GUARD)
    op.execute(PRUNE)


def downgrade() -> None:
    op.execute(UNDO_PRUNE)
    op.execute("DROP TRIGGER IF EXISTS audit_log_link ON audit_log")
    op.execute("DROP FUNCTION IF EXISTS keel_audit_log_link()")
    op.drop_index("ix_audit_idempotency_keys_created_at", table_name="audit_idempotency_keys")
    op.drop_table("audit_idempotency_keys")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_chain_heads")
    op.execute("DROP FUNCTION IF EXISTS keel_audit_checkpoints_guard()")
    op.execute("DROP FUNCTION IF EXISTS keel_audit_chain_heads_guard()")
    op.drop_index("ix_audit_log_chain_key_actor_id", table_name="audit_log")
    op.drop_index("ix_audit_log_chain_key_resource", table_name="audit_log")
    op.drop_column("audit_log", "targets")
    op.drop_column("audit_log", "source")
