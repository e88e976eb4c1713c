"""audit log streams; pruning waits for them

Revision ID: 0040
Revises: 0030
Create Date: 2026-12-01 13:00:00.000000

``audit_streams``: an organization's destinations (https, Splunk HEC, Datadog, S3), each with
how far it has got (``delivered_seq``). ``keel_audit_prune_limit`` (the pruning rule) also stops
at the least ``delivered_seq`` of the chain's active and paused streams: an entry leaves Postgres
only once the lake holds it and every stream that still wants it has it. A disabled stream (failed
past its retry window, or turned off) holds nothing back.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0040"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_PATH = "SET search_path = pg_catalog, public, pg_temp"

# 0009's rule, as it was (restored by the downgrade).
LIMIT_0009 = f"""
CREATE OR REPLACE FUNCTION keel_audit_prune_limit(p_chain_key text) RETURNS bigint
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
"""

LIMIT_0040 = f"""
CREATE OR REPLACE FUNCTION keel_audit_prune_limit(p_chain_key text) RETURNS bigint
LANGUAGE sql STABLE {SEARCH_PATH} AS $$
    SELECT LEAST(
        COALESCE(
            (SELECT min(a.seq) - 1 FROM audit_log a
             WHERE a.chain_key = p_chain_key
               -- (no retention configured: every entry counts as young)
               AND ((a.recorded_at >= now() - make_interval(days => (SELECT audit_retention_days FROM keel_settings WHERE id = 1))) IS NOT FALSE
                    OR a.export_seq > COALESCE((SELECT watermark FROM export_progress WHERE table_name = 'audit_log'), 0))),
            (SELECT max(a.seq) FROM audit_log a WHERE a.chain_key = p_chain_key),
            0),
        -- (LEAST ignores NULL: a chain with no stream waiting is limited by the rest alone)
        (SELECT min(s.delivered_seq) FROM audit_streams s
         WHERE s.organization_id::text = p_chain_key AND s.status IN ('active', 'paused')))
$$;
"""


def upgrade() -> None:
    op.create_table(
        "audit_streams",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "type",
            sa.Enum(
                "https",
                "splunk_hec",
                "datadog",
                "s3",
                name="audit_stream_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "format",
            sa.Enum(
                "keel",
                "ocsf",
                name="audit_stream_format",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("token_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "paused",
                "disabled",
                name="audit_stream_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("leased_by", sa.String(length=120), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_audit_streams_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_streams")),
        sa.UniqueConstraint("organization_id", "name", name=op.f("uq_audit_streams_organization_id_name")),
    )
    op.create_index(
        "ix_audit_streams_due",
        "audit_streams",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.execute(LIMIT_0040)


def downgrade() -> None:
    op.execute(LIMIT_0009)
    op.drop_index("ix_audit_streams_due", table_name="audit_streams")
    op.drop_table("audit_streams")
