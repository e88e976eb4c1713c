"""anonymous people: an identify with only an anonymousId makes a person, merged later into the user

Revision ID: 0071
Revises: 0070
Create Date: 2026-12-01 15:40:00.000000

- ``people.anonymous``: the person is known only by an anonymous id (its ``user_id`` holds it);
  false once any call names the id as a user id.
- ``people.merged_into``: the user id an ``alias`` (or an ``identify`` carrying both ids) merged
  this person into; the row stays (a version the lake exports), the user's row holds its traits
  and first seen, and the API lists only unmerged people.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0071"
down_revision: str | None = "0070"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("people", sa.Column("anonymous", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("people", sa.Column("merged_into", sa.String(255), nullable=True))


def downgrade() -> None:
    op.drop_column("people", "merged_into")
    op.drop_column("people", "anonymous")
