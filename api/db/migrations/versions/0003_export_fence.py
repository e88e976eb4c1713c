"""export fence: a global insertion number on audit_log for the incremental lake export

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 05:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE audit_log_export_seq")
    # Existing rows are numbered in their recorded order; the rewrite fires no row triggers.
    op.add_column("audit_log", sa.Column("export_seq", sa.BigInteger(), nullable=True))
    op.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
    op.execute(
        "UPDATE audit_log SET export_seq = n.rn FROM (SELECT id, row_number() OVER (ORDER BY recorded_at, seq) AS rn"
        " FROM audit_log) n WHERE audit_log.id = n.id"
    )
    op.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change")
    op.execute(
        "SELECT setval('audit_log_export_seq', GREATEST((SELECT max(export_seq) FROM audit_log), 1), (SELECT count(*) > 0 FROM audit_log))"
    )
    op.alter_column(
        "audit_log", "export_seq", nullable=False, server_default=sa.text("nextval('audit_log_export_seq')")
    )
    op.create_index("ix_audit_log_export_seq_brin", "audit_log", ["export_seq"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("ix_audit_log_export_seq_brin", table_name="audit_log", postgresql_using="brin")
    op.drop_column("audit_log", "export_seq")
    op.execute("DROP SEQUENCE IF EXISTS audit_log_export_seq")
