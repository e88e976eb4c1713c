"""publishable keys (browser-safe ingest keys) and the browser origins a key may be used from

Revision ID: 0060
Revises: 0050
Create Date: 2026-12-01 14:00:00.000000

A publishable key is an ingest key (org or platform) that may only write events and evaluate
flags; ``allowed_origins`` (NULL: none listed) restricts the browser origins either kind of
ingest key is accepted from.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0060"
down_revision: str | None = "0050"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_tokens", sa.Column("publishable", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("api_tokens", sa.Column("allowed_origins", postgresql.ARRAY(sa.Text()), nullable=True))
    op.create_check_constraint(
        "ck_api_tokens_publishable_is_ingest",
        "api_tokens",
        "kind <> 'user' OR (NOT publishable AND allowed_origins IS NULL)",
    )


def downgrade() -> None:
    op.drop_constraint("ck_api_tokens_publishable_is_ingest", "api_tokens", type_="check")
    op.drop_column("api_tokens", "allowed_origins")
    op.drop_column("api_tokens", "publishable")
