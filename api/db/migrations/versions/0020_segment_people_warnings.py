"""people, trait history, merged identities and ingestion warnings (the Segment tracking API)

Revision ID: 0020
Revises: 0011

- ``people``: a person of an organization, with their latest traits (``identify``);
- ``person_trait_changes`` / ``org_trait_changes``: every change of traits, keyed by
  (organization, message_id) so a replay changes nothing twice, numbered for the lake's export;
- ``identity_aliases``: ``alias`` calls (an earlier id is this user id, in this org);
- ``ingestion_warnings``: messages refused or changed, counted per org, key, reason and day.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0020"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WARNING_KEY = "coalesce(organization_id, '00000000-0000-0000-0000-000000000000'::uuid), token_id, reason, day"


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("traits", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("first_seen_at"),
        _ts("last_seen_at"),
        sa.PrimaryKeyConstraint("organization_id", "user_id", name="pk_people"),
    )
    op.create_index("ix_people_traits", "people", ["traits"], postgresql_using="gin")
    for table in ("person_trait_changes", "org_trait_changes"):
        op.execute(f"CREATE SEQUENCE {table}_seq")
        op.create_table(
            table,
            sa.Column(
                "seq",
                sa.BigInteger(),
                nullable=False,
                server_default=sa.text(f"keel_export_nextval('{table}_seq'::regclass)"),
            ),
            sa.Column("organization_id", sa.Uuid(), nullable=False),
            sa.Column("message_id", sa.String(128), nullable=False),
            sa.Column("user_id", sa.String(255), nullable=table == "org_trait_changes"),
            sa.Column("traits", JSONB, nullable=False),
            _ts("timestamp"),
            _ts("received_at"),
            sa.PrimaryKeyConstraint("organization_id", "message_id", name=f"pk_{table}"),
        )
        op.create_index(f"ix_{table}_seq", table, ["seq"])
    op.create_table(
        "identity_aliases",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("previous_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        _ts("timestamp"),
        sa.PrimaryKeyConstraint("organization_id", "previous_id", name="pk_identity_aliases"),
    )
    op.create_table(
        "ingestion_warnings",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("token_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        _ts("first_seen_at"),
        _ts("last_seen_at"),
        sa.Column("message_id", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("sample", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ingestion_warnings"),
    )
    op.execute(f"CREATE UNIQUE INDEX uq_ingestion_warnings_key ON ingestion_warnings ({WARNING_KEY})")
    op.create_index(
        "ix_ingestion_warnings_organization_id_last_seen_at",
        "ingestion_warnings",
        ["organization_id", "last_seen_at"],
    )
    op.create_index("ix_ingestion_warnings_last_seen_at", "ingestion_warnings", ["last_seen_at"])


def downgrade() -> None:
    op.drop_table("ingestion_warnings")
    op.drop_table("identity_aliases")
    for table in ("org_trait_changes", "person_trait_changes"):
        op.drop_table(table)
        op.execute(f"DROP SEQUENCE {table}_seq")
    op.drop_table("people")
