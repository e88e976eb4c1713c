"""organizations gain the vendor's own account id and their latest traits

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 12:40:00.000000

Two columns that the Segment tracking API (``group`` calls) and flag targeting both read, laid
down once before either is built so that they share one shape:

- ``external_id``: the vendor's own account id for the org, optional and unique (a platform
  write key names an org by it in ``context.groupId``);
- ``traits``: the org's latest traits as one JSON object (plan, industry, employees, any custom
  trait), set by ``group`` calls; their history lives in its own table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("organizations", sa.Column("external_id", sa.String(255), nullable=True))
    op.create_unique_constraint("uq_organizations_external_id", "organizations", ["external_id"])
    op.add_column(
        "organizations",
        sa.Column("traits", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.create_check_constraint(
        "ck_organizations_traits_object", "organizations", "jsonb_typeof(traits) = 'object'"
    )


def downgrade() -> None:
    op.drop_constraint("ck_organizations_traits_object", "organizations", type_="check")
    op.drop_column("organizations", "traits")
    op.drop_constraint("uq_organizations_external_id", "organizations", type_="unique")
    op.drop_column("organizations", "external_id")
