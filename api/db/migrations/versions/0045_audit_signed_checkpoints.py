"""audit: signed checkpoints of the chain heads (JWS, EdDSA) and the public keys that verify them

Revision ID: 0045
Revises: 0040
Create Date: 2026-12-01 13:00:00.000000

- ``audit_signing_keys``: every public key (JWK) that ever signed a checkpoint, kept after a
  rotation so older checkpoints stay verifiable from the published JWKS;
- ``audit_signed_checkpoints``: one signed head per chain position. Append-only (UPDATE, DELETE
  and TRUNCATE refused on both tables), and a checkpoint must name a real entry with its real hash.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0045"
down_revision: str | None = "0040"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GUARDS = """
CREATE FUNCTION keel_audit_signed_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_signing_keys_no_change BEFORE UPDATE OR DELETE ON audit_signing_keys
    FOR EACH ROW EXECUTE FUNCTION keel_audit_signed_refuse_change();
CREATE TRIGGER audit_signing_keys_no_truncate BEFORE TRUNCATE ON audit_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_signed_refuse_change();
CREATE TRIGGER audit_signed_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_signed_checkpoints
    FOR EACH ROW EXECUTE FUNCTION keel_audit_signed_refuse_change();
CREATE TRIGGER audit_signed_checkpoints_no_truncate BEFORE TRUNCATE ON audit_signed_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION keel_audit_signed_refuse_change();

CREATE FUNCTION keel_audit_signed_checkpoint_on_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM audit_log a WHERE a.chain_key = NEW.chain_key AND a.seq = NEW.seq AND a.hash = NEW.hash
    ) THEN
        RAISE EXCEPTION 'signed checkpoint (chain %, seq %) does not match an entry of the chain', NEW.chain_key, NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_signed_checkpoints_on_chain BEFORE INSERT ON audit_signed_checkpoints
    FOR EACH ROW EXECUTE FUNCTION keel_audit_signed_checkpoint_on_chain();
"""


def upgrade() -> None:
    op.create_table(
        "audit_signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("public_jwk", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_audit_signing_keys")),
    )
    op.create_table(
        "audit_signed_checkpoints",
        sa.Column("chain_key", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_audit_signed_checkpoints_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["kid"],
            ["audit_signing_keys.kid"],
            name=op.f("fk_audit_signed_checkpoints_kid_audit_signing_keys"),
        ),
        sa.PrimaryKeyConstraint("chain_key", "seq", name=op.f("pk_audit_signed_checkpoints")),
    )
    op.execute(GUARDS)


def downgrade() -> None:
    op.drop_table("audit_signed_checkpoints")
    op.drop_table("audit_signing_keys")
    op.execute("DROP FUNCTION IF EXISTS keel_audit_signed_checkpoint_on_chain()")
    op.execute("DROP FUNCTION IF EXISTS keel_audit_signed_refuse_change()")
