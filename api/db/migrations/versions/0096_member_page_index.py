"""memberships get an index in the members page's order

Revision ID: 0096
Revises: 0095
Create Date: 2026-12-02 13:00:00.000000

The members page (``api/members/services.py``: an organization's live members in id order, keyset
pagination after an id) had only the unique (organization_id, user_id) index to find them: a page
read all of an organization's memberships and sorted them, and the plan Postgres settles on for
the prepared read after five executions (a generic plan, one for every organization) walked the
primary key in id order, filtering out every other organization's memberships on the way. Measured
on a private server (50 organizations of 21 members, 3,000 reads of one page through
``api.db.reads.Reader``, the backend's CPU from ``/proc/PID/schedstat``, three rounds): 471-533 us
of the backend a read without this index, 134-179 us with it. On (organization_id, id) a page is
one index range of its organization, whatever the others hold; with many organizations it is read
in order with no sort (``EXPLAIN (ANALYZE, BUFFERS)``: 51 rows of a 20,000-member organization
among 2,000 others, 0.17 ms). tests/test_reads.py holds the plan.

A plain ``CREATE INDEX``: it blocks writes to memberships (invitations, role changes) while it is
built, ~0.1 s per 100,000 memberships; reads go on.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0096"
down_revision: str | None = "0095"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_memberships_organization_id_id", "memberships", ["organization_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_memberships_organization_id_id", table_name="memberships")
