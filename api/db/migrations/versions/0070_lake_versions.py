"""organizations and people exported by version: every change of a row is numbered under the fence

Revision ID: 0070
Revises: 0065
Create Date: 2026-12-01 15:30:00.000000

Both tables are updated in place, so the lake copied them whole once a day. Now each has a
``lake_version`` that a trigger sets on every insert and every update that changes the row, from
its own sequence, with ``keel_export_nextval`` (migration 0010): the number is drawn under the
export fence (``api/db/fence.py``), so the exporter's high-water mark never passes a change still
in flight, and an export writes only the rows changed since its watermark
(``warehouse.lake_tables.ByVersion``). Existing rows are numbered once here, so the first export
after this migration writes each of them.

The trigger overwrites whatever a writer puts in the column, and only the owner can disable it.
The trigger function is ``SECURITY INVOKER``: the writer needs only USAGE on the sequence, which
the application role has on every sequence. Deletes are what a version cannot record: organizations
are deleted softly (``deleted_at``), and the application role loses DELETE on ``people``
(``api/people/models.py``), which nothing deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0070"
down_revision: str | None = "0065"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, the order existing rows are numbered in) of every table exported by version.
VERSIONED = (("organizations", "created_at, id"), ("people", "first_seen_at, organization_id, user_id"))

FUNCTION = """
CREATE FUNCTION keel_lake_version() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $$
BEGIN
    -- An update that changes nothing is no new version (nor is one that only sets the version).
    IF TG_OP = 'UPDATE' THEN
        NEW.lake_version := OLD.lake_version;
        IF NEW IS NOT DISTINCT FROM OLD THEN
            RETURN NEW;
        END IF;
    END IF;
    NEW.lake_version := public.keel_export_nextval(TG_ARGV[0]::regclass);
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION keel_lake_version() IS
    'numbers each changed row of a table exported by version (its lake_version), under the export fence';
"""


def upgrade() -> None:
    op.execute(FUNCTION)
    for table, order in VERSIONED:
        sequence = f"{table}_lake_version_seq"
        op.execute(f"CREATE SEQUENCE {sequence} AS bigint")
        op.add_column(table, sa.Column("lake_version", sa.BigInteger(), nullable=True))
        key = "id" if table == "organizations" else "organization_id, user_id"
        op.execute(
            f"UPDATE {table} t SET lake_version = n.v FROM"
            f" (SELECT {key}, nextval('{sequence}') AS v FROM (SELECT {key} FROM {table} ORDER BY {order}) o) n"
            f" WHERE ({', '.join('t.' + k.strip() for k in key.split(','))}) = ({', '.join('n.' + k.strip() for k in key.split(','))})"
        )
        op.alter_column(table, "lake_version", nullable=False)
        op.create_index(f"ix_{table}_lake_version", table, ["lake_version"])
        op.execute(
            f"CREATE TRIGGER lake_version BEFORE INSERT OR UPDATE ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION keel_lake_version('{sequence}')"
        )


def downgrade() -> None:
    for table, _ in reversed(VERSIONED):
        op.execute(f"DROP TRIGGER lake_version ON {table}")
        op.drop_index(f"ix_{table}_lake_version", table_name=table)
        op.drop_column(table, "lake_version")
        op.execute(f"DROP SEQUENCE {table}_lake_version_seq")
    op.execute("DROP FUNCTION keel_lake_version()")
