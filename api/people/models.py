"""People (per organization), the history of their traits and of the org's, and merged identities.

Written by one statement per call type after a batch's events are stored (:mod:`api.people.store`);
each change is keyed by (organization, message_id), so a replayed message changes nothing twice.
The schema changes only through the migrations in ``api/db/migrations/``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    FetchedValue,
    Index,
    Sequence,
    String,
    Table,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from api.db.base import APP_APPEND_ONLY, APP_DEFAULT_PRIVILEGES, Base, app_privileges
from api.db.fence import fenced_nextval

person_trait_changes_seq = Sequence("person_trait_changes_seq", metadata=Base.metadata)
org_trait_changes_seq = Sequence("org_trait_changes_seq", metadata=Base.metadata)

#: One person of one organization: the latest traits (merged, newest last) and when they were seen.
#: Never deleted (the lake exports the table by version: a deleted row would have none); a person
#: merged into another keeps its row, with ``merged_into``.
people_table = Table(
    "people",
    Base.metadata,
    Column("organization_id", Uuid, primary_key=True),
    #: The user id, or the anonymous id of a person known only by one (``anonymous``).
    Column("user_id", String(255), primary_key=True),
    Column("traits", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("anonymous", Boolean, nullable=False, server_default=false()),
    #: The user id an alias (or an identify with both ids) merged this person into.
    Column("merged_into", String(255)),
    #: Set by a trigger on every change, under the export fence (migration 0070).
    Column(
        "lake_version",
        BigInteger,
        nullable=False,
        server_default=FetchedValue(),
        server_onupdate=FetchedValue(),
    ),
    Index("ix_people_traits", "traits", postgresql_using="gin"),
    Index("ix_people_lake_version", "lake_version"),
    **app_privileges("SELECT", "INSERT", "UPDATE"),
)

#: Every ``identify`` that carried traits: what they were set to, and when (as of the message).
person_trait_changes_table = Table(
    "person_trait_changes",
    Base.metadata,
    Column("seq", BigInteger, server_default=fenced_nextval(person_trait_changes_seq.name), nullable=False),
    Column("organization_id", Uuid, primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("traits", JSONB, nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_person_trait_changes_seq", "seq"),
    **app_privileges(*APP_APPEND_ONLY),
)

#: Every ``group`` call: the org's traits it set, who sent it, and when.
org_trait_changes_table = Table(
    "org_trait_changes",
    Base.metadata,
    Column("seq", BigInteger, server_default=fenced_nextval(org_trait_changes_seq.name), nullable=False),
    Column("organization_id", Uuid, primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("user_id", String(255)),
    Column("traits", JSONB, nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_org_trait_changes_seq", "seq"),
    **app_privileges(*APP_APPEND_ONLY),
)

#: ``alias``: an earlier id (an anonymous id, mostly) is the same person as ``user_id`` in this org.
identity_aliases_table = Table(
    "identity_aliases",
    Base.metadata,
    Column("organization_id", Uuid, primary_key=True),
    Column("previous_id", String(255), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    **app_privileges(*APP_DEFAULT_PRIVILEGES),
)
