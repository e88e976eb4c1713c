"""feature flags: definitions, per-org overrides, and the version counter the caches poll

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 05:40:00.000000

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every statement that writes flags or overrides bumps the version and notifies the API processes,
# in the writer's own transaction: the NOTIFY is delivered at commit, and a process that missed it
# sees the new version at its next poll. A trigger, so no write path (API, CLI, psql) can forget.
FLAGS_CHANGED = """
CREATE FUNCTION keel_flags_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    new_version bigint;
BEGIN
    UPDATE flags_version SET version = version + 1 WHERE id = 1 RETURNING version INTO new_version;
    PERFORM pg_notify('keel_flags', new_version::text);
    RETURN NULL;
END;
$$;
CREATE TRIGGER feature_flags_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON feature_flags
    FOR EACH STATEMENT EXECUTE FUNCTION keel_flags_changed();
CREATE TRIGGER feature_flag_overrides_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON feature_flag_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION keel_flags_changed();
"""


def upgrade() -> None:
    op.create_table(
        "flags_version",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_flags_version_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flags_version")),
    )
    op.execute("INSERT INTO flags_version (id, version) VALUES (1, 0)")
    op.create_table(
        "feature_flags",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("rollout_percentage", sa.SmallInteger(), nullable=False),
        sa.Column(
            "stickiness",
            sa.Enum(
                "org", "user", name="flag_stickiness", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "rollout_percentage BETWEEN 0 AND 100", name=op.f("ck_feature_flags_rollout_percentage_range")
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_feature_flags_created_by_users")),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name=op.f("fk_feature_flags_updated_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_flags")),
        sa.UniqueConstraint("key", name=op.f("uq_feature_flags_key")),
    )
    op.create_table(
        "feature_flag_overrides",
        sa.Column("flag_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_feature_flag_overrides_created_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["flag_id"], ["feature_flags.id"], name=op.f("fk_feature_flag_overrides_flag_id_feature_flags")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_feature_flag_overrides_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"], ["users.id"], name=op.f("fk_feature_flag_overrides_updated_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_flag_overrides")),
        sa.UniqueConstraint(
            "flag_id", "organization_id", name=op.f("uq_feature_flag_overrides_flag_id_organization_id")
        ),
    )
    op.create_index(
        "ix_feature_flag_overrides_organization_id",
        "feature_flag_overrides",
        ["organization_id"],
        unique=False,
    )
    op.execute(FLAGS_CHANGED)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS feature_flag_overrides_changed ON feature_flag_overrides")
    op.execute("DROP TRIGGER IF EXISTS feature_flags_changed ON feature_flags")
    op.execute("DROP FUNCTION IF EXISTS keel_flags_changed()")
    op.drop_index("ix_feature_flag_overrides_organization_id", table_name="feature_flag_overrides")
    op.drop_table("feature_flag_overrides")
    op.drop_table("feature_flags")
    op.drop_table("flags_version")
