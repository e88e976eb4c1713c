"""memberships get an index in the members page's order

Revision ID: 0096
Revises: 0095
Create Date: 2026-12-02 13:00:00.000000

The members page (``api/members/services.py``: an organization's live members in id order, keyset
pagination after an id) had only the unique (organization_id, user_id) index to find them: each
plan read all of an organization's memberships and sorted them, or walked the primary key in id
order past the other organizations' rows. Which one Postgres settled on for the prepared read
followed the table's statistics. Measured on a private server (``pg_prepared_statements``;
``EXPLAIN (ANALYZE, BUFFERS)``; the backend's CPU from ``/proc/PID/schedstat``, 3,000 reads of one
page through ``api.db.reads.Reader``, three rounds):

- among 2,000 organizations of 100 members, every read was planned afresh (0 generic plans, 18
  custom): 0.12-0.14 ms of planning against 0.05 ms of execution for a page of 21; a
  20,000-member organization's page walked the primary key (0.2-0.85 ms);
- among 50 organizations of 21 members, the generic plan it kept walked the primary key for every
  page: 471-533 us of the backend a read, against 134-179 us with this index.

On (organization_id, id) a page is one range of its organization's entries, in order, whatever the
other tenants hold, and that plan is generic: it is made once per connection. tests/test_reads.py
holds the plan.

A plain ``CREATE INDEX``: invitations and role changes wait while it is built; reads go on.
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
