"""audit streams push the signed checkpoints too: how far each stream has sent them

Revision ID: 0065
Revises: 0060
Create Date: 2026-12-01 14:00:00.000000

``delivered_checkpoint_seq``: every signed checkpoint of the stream's chain up to this seq has been
accepted by the destination (0: none yet, so an existing stream sends the checkpoints signed so far).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0065"
down_revision: str | None = "0060"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "audit_streams",
        sa.Column("delivered_checkpoint_seq", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("audit_streams", "delivered_checkpoint_seq")
