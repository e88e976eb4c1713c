"""Product events: a Core table partitioned by day of receipt, and its dedupe keys.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Sequence, String, Table, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from api.db.base import APP_APPEND_ONLY, Base, app_privileges
from api.db.fence import fenced_nextval

# Events are written by one bulk statement per batch and read by the export flow in ingest order,
# so they are a Core table (no ORM identity, no primary key to maintain): partitioned by day of
# receipt, with a BRIN index on ingest_seq for the exporter. Each day partition has a unique
# constraint of its own on (organization_id, message_id) (migration 0080; made with the partition
# by keel_ensure_event_partitions, so not declared here): the day's dedupe keys.
events_ingest_seq = Sequence("events_ingest_seq", metadata=Base.metadata)


events_table = Table(
    "events",
    Base.metadata,
    Column(
        "ingest_seq",
        BigInteger,
        server_default=fenced_nextval(events_ingest_seq.name),
        nullable=False,
    ),
    Column("organization_id", Uuid, nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("event", String(200), nullable=False),
    Column("user_id", String(255)),
    Column("anonymous_id", String(255)),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("properties", JSONB, nullable=False),
    Column("context", JSONB, nullable=False),
    Index("ix_events_ingest_seq_brin", "ingest_seq", postgresql_using="brin"),
    postgresql_partition_by="RANGE (received_at)",
    # Partitions come and go only through the owner's functions (keel_ensure_event_partitions,
    # keel_drop_event_partition).
    **app_privileges(*APP_APPEND_ONLY),
)


#: (organization, message_id) claimed near a day boundary (api/events/store.py: the keys received
#: in a day's first or last hour, where two claims of one key may fall on two days' events
#: partitions): partitioned like events (``event_keys_pYYYYMMDD`` with its own primary key on
#: (organization_id, message_id), made and dropped with the events partition).
event_keys_table = Table(
    "event_keys",
    Base.metadata,
    Column("organization_id", Uuid, nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    postgresql_partition_by="RANGE (received_at)",
    **app_privileges(*APP_APPEND_ONLY),
)
