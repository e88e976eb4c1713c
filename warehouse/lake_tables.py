"""Every table the lake holds, declared once: its columns and their types, its key, how it is
exported (:data:`ExportMode`: appended by sequence, changed rows by version, or a daily snapshot),
how it is partitioned, and which of its Postgres columns stay out of the lake (and why).

Everything else is derived from here: the exporter's SELECT and Arrow schema and the empty
``_schema`` files (``pipelines/tasks/export.py``), the warehouse's sources and the empty
shape of a source no export has written yet (``warehouse/build.py``), and the lake's layout in
docs/warehouse.md (``warehouse/dbt_project.py``).
``tests/test_lake_tables.py`` compares each declaration with the migrated database, so a column a
migration adds is reported until it is declared here or excluded. Adding a column to the lake is
one migration plus one line below.

Pure data (the warehouse imports neither ``api`` nor ``pipelines``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import pyarrow as pa

#: How a column's value lands in the lake. ``uuid`` and ``json`` are text in the lake (Postgres's
#: own text form, made by the exporter from the values Postgres sends), the rest are what their
#: names say.
Kind = Literal["int", "text", "uuid", "json", "ts", "bool"]

ARROW_TYPES: Mapping[str, pa.DataType] = MappingProxyType(
    {
        "int": pa.int64(),
        "text": pa.string(),
        "uuid": pa.string(),
        "json": pa.string(),
        "ts": pa.timestamp("us", tz="UTC"),
        "bool": pa.bool_(),
    }
)
#: The DuckDB type a Parquet column of each kind reads as.
DUCKDB_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "int": "BIGINT",
        "text": "VARCHAR",
        "uuid": "VARCHAR",
        "json": "VARCHAR",
        "ts": "TIMESTAMPTZ",
        "bool": "BOOLEAN",
    }
)


@dataclass(frozen=True)
class Col:
    name: str
    kind: Kind
    #: The SELECT expression, when the lake's value is not the column itself cast to its kind
    #: (a URL cut short, a joined table's column).
    expr: str | None = None


@dataclass(frozen=True)
class BySequence:
    """Append-only: exported incrementally by ``column`` (numbered from ``sequence`` by the
    column's default, under the export fence: ``api/db/fence.py``), one file per range and UTC
    date of ``date_column`` (``date=YYYY-MM-DD``)."""

    column: str
    sequence: str
    date_column: str


@dataclass(frozen=True)
class ByVersion:
    """Updated in place, exported incrementally all the same (as dlt's incremental merge): every
    insert or update of a row numbers it anew into ``column`` from ``sequence`` (a trigger draws
    the number with ``keel_export_nextval``, under the export fence: ``api/db/fence.py``), so an
    export writes only the rows changed since its watermark, one file per range
    (``<name>-<from>-<to>.parquet``, unpartitioned). A key changed twice is in the lake twice: the
    warehouse's staging keeps its latest version. Rows are never deleted (the application role
    may not; organizations are deleted softly, with ``deleted_at``)."""

    column: str
    sequence: str


#: How a table leaves Postgres: ``sequence`` (append-only, :class:`BySequence`), ``version``
#: (updated in place, changed rows only, :class:`ByVersion`) or ``snapshot`` (copied whole daily).
ExportMode = Literal["sequence", "version", "snapshot"]


@dataclass(frozen=True)
class LakeTable:
    """One Postgres table as the lake holds it (under the same name)."""

    name: str
    columns: tuple[Col, ...]
    key: tuple[str, ...]
    #: Neither this nor ``by_version``: a small table copied whole once a day
    #: (``snapshot_date=YYYY-MM-DD``, the day's last copy wins).
    by_sequence: BySequence | None = None
    by_version: ByVersion | None = None
    #: Postgres columns that stay out of the lake, each with the reason.
    excluded: Mapping[str, str] = field(default_factory=dict)
    #: Tables joined in for some columns (their ``expr`` names them); the table's own columns are
    #: then qualified by its name.
    joins: str = ""
    #: Low-cardinality columns worth dictionary-encoding in Parquet.
    dictionary: tuple[str, ...] = ()
    #: The warehouse builds without any file of it (an empty source of this shape): the table is
    #: written by a part that may not have run yet.
    optional: bool = False

    def __post_init__(self) -> None:
        assert not (self.by_sequence and self.by_version), f"{self.name}: one export mode"
        if self.by_version is not None:
            assert self.by_version.column in {c.name for c in self.columns}, f"{self.name}: version column"

    @property
    def mode(self) -> ExportMode:
        if self.by_sequence is not None:
            return "sequence"
        return "version" if self.by_version is not None else "snapshot"

    @property
    def incremental(self) -> BySequence | ByVersion | None:
        """The numbered column an incremental export reads by (None: a snapshot)."""
        return self.by_sequence or self.by_version

    @property
    def layout(self) -> str:
        """Where the lake keeps the table's files, relative to its root."""
        if self.mode == "sequence":
            return f"{self.name}/date=YYYY-MM-DD/{self.name}-<from>-<to>.parquet"
        if self.mode == "version":
            return f"{self.name}/{self.name}-<from>-<to>.parquet"
        return f"{self.name}/snapshot_date=YYYY-MM-DD/{self.name}.parquet"

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.name, ARROW_TYPES[c.kind]) for c in self.columns])

    @property
    def delta_encoded(self) -> tuple[str, ...]:
        """Columns written with Parquet's DELTA_BINARY_PACKED: the sequence column and the
        timestamps of an append-only table, which rise (nearly) row by row. On the bench's events
        they halve the files and take 10% off the write (bench/bench_pipelines.py)."""
        if self.by_sequence is None:
            return ()
        return tuple(
            c.name
            for c in self.columns
            if c.expr is None and (c.name == self.by_sequence.column or c.kind == "ts")
        )

    @property
    def with_statistics(self) -> tuple[str, ...]:
        """Columns whose Parquet min/max are written: numbers, times and flags, the organization
        and the low-cardinality (``dictionary``) text, which queries filter by. Not other ids,
        free text or JSON, whose bounds prune no row group: each costs the writer a comparison of
        every value (on the bench's events, min/max of every column but JSON were a fifth of the
        Parquet write; bench/bench_pipelines.py)."""
        return tuple(
            c.name
            for c in self.columns
            if c.kind in ("int", "ts", "bool") or c.name in {*self.dictionary, "organization_id"}
        )

    @property
    def duckdb_columns(self) -> str:
        """The columns of an empty source, as a DuckDB column list (with ``filename``, which
        ``read_parquet(..., filename = true)`` adds)."""
        return ", ".join([f"{c.name} {DUCKDB_TYPES[c.kind]}" for c in self.columns] + ["filename VARCHAR"])

    def _own(self, column: str) -> str:
        return f'{self.name}."{column}"' if self.joins else f'"{column}"'

    @property
    def select_list(self) -> str:
        """The export's SELECT list, in the order of ``arrow_schema``.

        uuid and JSON columns leave Postgres as they are (16 bytes; jsonb's text behind a version
        byte) and the exporter writes their text forms (``pipelines/tasks/export.py``): a cast to
        text in the query costs the server a ``uuid_out`` and a text copy of every value, 17% of
        its work in the export, whose slowest stage it is (bench/bench_pipelines.py)."""
        return ", ".join(
            self._own(c.name) if c.expr is None else f'{c.expr} AS "{c.name}"' for c in self.columns
        )

    @property
    def source(self) -> str:
        return f"{self.name} {self.joins}".strip()

    @property
    def sequence_column(self) -> str:
        """The sequence (or version) column as the export's WHERE clause names it."""
        numbered = self.incremental
        assert numbered is not None, f"{self.name} is a snapshot"
        return self._own(numbered.column)

    @property
    def query(self) -> str:
        return f"SELECT {self.select_list} FROM {self.source}"


def _cols(spec: str) -> tuple[Col, ...]:
    """``"name kind, ..."`` as columns (for the plain ones; others are written as ``Col``)."""
    return tuple(Col(name, kind) for name, kind in (part.split() for part in spec.split(",")))  # type: ignore[arg-type]


EVENTS = LakeTable(
    name="events",
    columns=_cols(
        "ingest_seq int, organization_id uuid, message_id text, event text, user_id text, anonymous_id text,"
        " timestamp ts, sent_at ts, received_at ts, properties json, context json"
    ),
    key=("organization_id", "message_id"),
    by_sequence=BySequence(column="ingest_seq", sequence="events_ingest_seq", date_column="timestamp"),
    dictionary=("organization_id", "event", "user_id", "anonymous_id"),
)

AUDIT_LOG = LakeTable(
    name="audit_log",
    columns=(
        *_cols(
            "export_seq int, id uuid, organization_id uuid, chain_key text, seq int, occurred_at ts,"
            " recorded_at ts, actor_type text, actor_id text, actor_name text, action text,"
            " resource_type text, resource_id text, metadata json"
        ),
        Col("ip", "text", expr="host(ip)"),  # the address alone, without a /32
        *_cols("user_agent text, request_id text, prev_hash text, hash text, source text, targets json"),
    ),
    key=("id",),
    by_sequence=BySequence(column="export_seq", sequence="audit_log_export_seq", date_column="occurred_at"),
    dictionary=(
        "organization_id",
        "chain_key",
        "actor_type",
        "actor_id",
        "action",
        "resource_type",
        "source",
    ),
)

BILLING_DISCREPANCIES = LakeTable(
    name="billing_discrepancies",
    columns=_cols(
        "export_seq int, id uuid, run_id uuid, detected_at ts, kind text, severity text,"
        " organization_id uuid, stripe_customer_id text, stripe_subscription_id text, expected text,"
        " actual text, detail text, repaired bool"
    ),
    key=("id",),
    by_sequence=BySequence(
        column="export_seq", sequence="billing_discrepancies_export_seq", date_column="detected_at"
    ),
    optional=True,
)

# One row per HTTP attempt of an outbound webhook, with its delivery's event type.
WEBHOOK_ATTEMPTS = LakeTable(
    name="webhook_attempts",
    columns=(
        *_cols("seq int, id uuid, organization_id uuid, endpoint_id uuid, delivery_id uuid"),
        Col("event_type", "text", expr="d.event_type"),
        *_cols(
            "attempt_number int, started_at ts, duration_ms int, status_code int, error_class text,"
            " error_detail text"
        ),
    ),
    key=("id",),
    by_sequence=BySequence(column="seq", sequence="webhook_attempts_seq_seq", date_column="started_at"),
    joins="JOIN webhook_deliveries d ON d.id = webhook_attempts.delivery_id",
    excluded={
        "response_headers": "the customer's data: support reads it through the API",
        "response_body": "the customer's data: support reads it through the API",
    },
    dictionary=("organization_id", "endpoint_id", "event_type", "error_class"),
    optional=True,
)

# Organizations, exported by version: each change of a row (a rename, traits set by a group
# call, a soft delete) is one new version in the lake.
ORGANIZATIONS = LakeTable(
    name="organizations",
    columns=_cols(
        "lake_version int, id uuid, name text, slug text, status text, stripe_customer_id text,"
        " created_at ts, updated_at ts, deleted_at ts, external_id text, traits json"
    ),
    key=("id",),
    by_version=ByVersion(column="lake_version", sequence="organizations_lake_version_seq"),
    excluded={"suspended_reason": "read by staff in the admin API; no mart uses it"},
)

MEMBERSHIPS = LakeTable(
    name="memberships",
    columns=_cols(
        "id uuid, organization_id uuid, user_id uuid, role text, status text, created_at ts, updated_at ts"
    ),
    key=("id",),
    excluded={"invited_by": "no mart uses it (the audit log records each invitation)"},
)

# The billing mirror, whole: small (one row per subscription) and updated in place.
SUBSCRIPTIONS = LakeTable(
    name="subscriptions",
    columns=_cols(
        "id uuid, organization_id uuid, stripe_subscription_id text, stripe_customer_id text,"
        " stripe_price_id text, stripe_product_id text, plan text, status text, seats int, unit_amount int,"
        " currency text, interval text, current_period_start ts, current_period_end ts, trial_end ts,"
        " cancel_at_period_end bool, canceled_at ts, stripe_state_at ts, synced_at ts, created_at ts,"
        " updated_at ts"
    ),
    key=("id",),
    excluded={"stripe_event_id": "the mirror's bookkeeping of Stripe's event order; no mart uses it"},
    optional=True,
)

# Every reconciliation run: which run is the latest, and how many discrepancies it recorded, so
# the warehouse knows which of them are still open.
BILLING_RECONCILIATION_RUNS = LakeTable(
    name="billing_reconciliation_runs",
    columns=_cols(
        "id uuid, started_at ts, finished_at ts, status text, repair bool, usage_source text,"
        " discrepancy_count int, repaired_count int"
    ),
    key=("id",),
    excluded={
        "stripe_customers": "the run's own counts, read in the admin API",
        "stripe_subscriptions": "the run's own counts, read in the admin API",
        "mirror_subscriptions": "the run's own counts, read in the admin API",
        "errors": "Stripe's error texts, read in the admin API",
    },
    optional=True,
)

# Customers' receivers, without their secrets, and their URLs without query or fragment (where
# receivers often carry a token).
WEBHOOK_ENDPOINTS = LakeTable(
    name="webhook_endpoints",
    columns=(
        *_cols("id uuid, organization_id uuid"),
        Col("url", "text", expr="regexp_replace(url, '[?#].*$', '')"),
        Col("description", "text"),
        Col("event_types", "text", expr="array_to_string(event_types, ',')"),
        *_cols(
            "enabled bool, disabled_reason text, disabled_at ts, failing_since ts, created_at ts,"
            " updated_at ts, deleted_at ts"
        ),
    ),
    key=("id",),
    excluded={
        "secret": "signing secrets never leave Postgres",
        "previous_secret": "signing secrets never leave Postgres",
        "previous_secret_expires_at": "belongs with the secret",
    },
    optional=True,
)

# Events received from Stripe and what became of them.
INBOUND_EVENTS = LakeTable(
    name="inbound_events",
    columns=_cols(
        "id uuid, source text, external_id text, event_type text, livemode bool, event_created_at ts,"
        " status text, attempts int, last_error text, duplicates int, received_at ts, processed_at ts,"
        " updated_at ts"
    ),
    key=("id",),
    excluded={"payload": "Stripe's whole event stays in Postgres (reprocessing reads it there)"},
    optional=True,
)

# People of each organization (Segment identify/group/alias calls), updated in place and exported
# by version: each identify that changed a person is one new version in the lake.
PEOPLE = LakeTable(
    name="people",
    columns=_cols(
        "lake_version int, organization_id uuid, user_id text, traits json, first_seen_at ts,"
        " last_seen_at ts, anonymous bool, merged_into text"
    ),
    key=("organization_id", "user_id"),
    by_version=ByVersion(column="lake_version", sequence="people_lake_version_seq"),
    dictionary=("organization_id",),
    optional=True,
)

# Every identify's traits and every group's org traits, append-only: the history "as of" a day.
PERSON_TRAIT_CHANGES = LakeTable(
    name="person_trait_changes",
    columns=_cols(
        "seq int, organization_id uuid, message_id text, user_id text, traits json, timestamp ts,"
        " received_at ts"
    ),
    key=("organization_id", "message_id"),
    by_sequence=BySequence(column="seq", sequence="person_trait_changes_seq", date_column="timestamp"),
    dictionary=("organization_id",),
    optional=True,
)

ORG_TRAIT_CHANGES = LakeTable(
    name="org_trait_changes",
    columns=_cols(
        "seq int, organization_id uuid, message_id text, user_id text, traits json, timestamp ts,"
        " received_at ts"
    ),
    key=("organization_id", "message_id"),
    by_sequence=BySequence(column="seq", sequence="org_trait_changes_seq", date_column="timestamp"),
    dictionary=("organization_id",),
    optional=True,
)

# alias calls: an earlier id (anonymous, mostly) merged into a user id, per organization.
IDENTITY_ALIASES = LakeTable(
    name="identity_aliases",
    columns=_cols("organization_id uuid, previous_id text, user_id text, message_id text, timestamp ts"),
    key=("organization_id", "previous_id"),
    optional=True,
)

#: Every table of the lake, by name.
LAKE_TABLES: Mapping[str, LakeTable] = MappingProxyType(
    {
        t.name: t
        for t in (
            EVENTS,
            AUDIT_LOG,
            BILLING_DISCREPANCIES,
            WEBHOOK_ATTEMPTS,
            ORGANIZATIONS,
            MEMBERSHIPS,
            SUBSCRIPTIONS,
            BILLING_RECONCILIATION_RUNS,
            WEBHOOK_ENDPOINTS,
            INBOUND_EVENTS,
            PEOPLE,
            PERSON_TRAIT_CHANGES,
            ORG_TRAIT_CHANGES,
            IDENTITY_ALIASES,
        )
    }
)
