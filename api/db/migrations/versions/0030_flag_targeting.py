"""flag targeting: rules and variants on flags, a variant per override, segments, scheduled
changes and evaluation marks (issue 17)

Revision ID: 0030
Revises: 0020
Create Date: 2026-12-01 13:15:00.000000

Segments change what rules mean, so their writes bump ``flags_version`` and notify the caches
exactly as the flag tables' do (the trigger function of 0004). Evaluation marks and scheduled
changes do not change any answer until applied (applying one writes ``feature_flags``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0030"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY_ARRAY = sa.text("'[]'::jsonb")


def upgrade() -> None:
    op.add_column("feature_flags", sa.Column("rules", JSONB, nullable=False, server_default=EMPTY_ARRAY))
    op.add_column("feature_flags", sa.Column("variants", JSONB, nullable=False, server_default=EMPTY_ARRAY))
    op.add_column("feature_flag_overrides", sa.Column("variant", sa.String(100), nullable=True))
    op.create_table(
        "flag_segments",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("constraints", JSONB, nullable=False, server_default=EMPTY_ARRAY),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_flag_segments_created_by_users")),
        sa.ForeignKeyConstraint(["updated_by"], ["users.id"], name=op.f("fk_flag_segments_updated_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flag_segments")),
        sa.UniqueConstraint("name", name=op.f("uq_flag_segments_name")),
    )
    op.execute(
        "CREATE TRIGGER flag_segments_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flag_segments "
        "FOR EACH STATEMENT EXECUTE FUNCTION keel_flags_changed()"
    )
    op.create_table(
        "flag_scheduled_changes",
        sa.Column("flag_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("patch", JSONB, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending", "applied", "failed", "canceled", name="flag_schedule_status", native_enum=False,
                create_constraint=True, length=32,
            ),
            nullable=False,
        ),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["flag_id"], ["feature_flags.id"], name=op.f("fk_flag_scheduled_changes_flag_id_feature_flags")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_flag_scheduled_changes_created_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flag_scheduled_changes")),
    )  # fmt: skip
    op.create_index(
        "ix_flag_scheduled_changes_due", "flag_scheduled_changes", ["at"],
        postgresql_where=sa.text("status = 'pending'"),
    )  # fmt: skip
    op.create_table(
        "flag_evaluation_marks",
        sa.Column("flag_key", sa.String(length=100), nullable=False),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("flag_key", name=op.f("pk_flag_evaluation_marks")),
    )


def downgrade() -> None:
    op.drop_table("flag_evaluation_marks")
    op.drop_index("ix_flag_scheduled_changes_due", table_name="flag_scheduled_changes")
    op.drop_table("flag_scheduled_changes")
    op.drop_table("flag_segments")
    op.drop_column("feature_flag_overrides", "variant")
    op.drop_column("feature_flags", "variants")
    op.drop_column("feature_flags", "rules")
