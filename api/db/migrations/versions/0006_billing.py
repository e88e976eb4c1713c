"""billing: the Stripe subscription mirror, reconciliation runs and their discrepancies

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 06:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_reconciliation_runs",
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "completed",
                "failed",
                name="reconciliation_run_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("repair", sa.Boolean(), nullable=False),
        sa.Column("usage_source", sa.String(length=32), nullable=False),
        sa.Column("stripe_customers", sa.BigInteger(), nullable=False),
        sa.Column("stripe_subscriptions", sa.BigInteger(), nullable=False),
        sa.Column("mirror_subscriptions", sa.BigInteger(), nullable=False),
        sa.Column("discrepancy_count", sa.BigInteger(), nullable=False),
        sa.Column("repaired_count", sa.BigInteger(), nullable=False),
        sa.Column("errors", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_reconciliation_runs")),
    )
    op.execute("CREATE SEQUENCE billing_discrepancies_export_seq")
    op.create_table(
        "billing_discrepancies",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "missing_in_mirror",
                "missing_in_stripe",
                "status_mismatch",
                "plan_mismatch",
                "seat_count_mismatch",
                "over_seat_limit",
                "unpaid_active_usage",
                "stale_mirror",
                "unlinked_customer",
                name="discrepancy_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "severity",
            sa.Enum(
                "high",
                "medium",
                "low",
                name="discrepancy_severity",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("organization_id", sa.Uuid(), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("expected", sa.Text(), nullable=True),
        sa.Column("actual", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("repaired", sa.Boolean(), nullable=False),
        sa.Column(
            "export_seq",
            sa.BigInteger(),
            server_default=sa.text("nextval('billing_discrepancies_export_seq')"),
            nullable=False,
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_billing_discrepancies_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["billing_reconciliation_runs.id"],
            name=op.f("fk_billing_discrepancies_run_id_billing_reconciliation_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_discrepancies")),
    )
    op.create_index(
        "ix_billing_discrepancies_export_seq_brin",
        "billing_discrepancies",
        ["export_seq"],
        unique=False,
        postgresql_using="brin",
    )
    op.create_index("ix_billing_discrepancies_run_id", "billing_discrepancies", ["run_id"], unique=False)
    op.create_table(
        "subscriptions",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_price_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_product_id", sa.String(length=255), nullable=True),
        sa.Column("plan", sa.String(length=255), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "trialing",
                "active",
                "past_due",
                "canceled",
                "unpaid",
                "incomplete",
                "incomplete_expired",
                "paused",
                name="subscription_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("seats", sa.BigInteger(), nullable=False),
        sa.Column("unit_amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("interval", sa.String(length=16), nullable=True),
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trial_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stripe_state_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stripe_event_id", sa.String(length=255), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_subscriptions_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("stripe_subscription_id", name=op.f("uq_subscriptions_stripe_subscription_id")),
    )
    op.create_index("ix_subscriptions_organization_id", "subscriptions", ["organization_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_subscriptions_organization_id", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_index("ix_billing_discrepancies_run_id", table_name="billing_discrepancies")
    op.drop_index(
        "ix_billing_discrepancies_export_seq_brin",
        table_name="billing_discrepancies",
        postgresql_using="brin",
    )
    op.drop_table("billing_discrepancies")
    op.drop_table("billing_reconciliation_runs")
    op.execute("DROP SEQUENCE IF EXISTS billing_discrepancies_export_seq")
