"""users: one user per address as api.emails compares them (NFKC, then case)

Revision ID: 0008
Revises: 0007

The unique index moves from ``lower(email)`` to ``lower(normalize(email, NFKC))``, so a full-width
lookalike of an address is the same address to the database too. Rows that were distinct before and
collide now cannot be merged by a migration (each has its own memberships and tokens): the upgrade
stops and names them, for an operator to rename or merge first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "lower(normalize(email, NFKC))"


def upgrade() -> None:
    collisions = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT {KEY} AS key, array_agg(email ORDER BY email) AS emails FROM users "
                f"GROUP BY {KEY} HAVING count(*) > 1 ORDER BY 1 LIMIT 20"
            )
        )
        .all()
    )
    if collisions:
        listed = "; ".join(f"{row.key}: {', '.join(row.emails)}" for row in collisions)
        raise RuntimeError(
            "users whose addresses are the same after NFKC normalization must be merged or renamed "
            f"before this upgrade: {listed}"
        )
    op.create_index("uq_users_email_key", "users", [sa.literal_column(KEY)], unique=True)
    op.drop_index("uq_users_email_lower", table_name="users")


def downgrade() -> None:
    op.create_index("uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True)
    op.drop_index("uq_users_email_key", table_name="users")
