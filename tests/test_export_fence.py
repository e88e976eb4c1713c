"""The export fence is structural: every number of an exported append-only table is drawn by the
column's default under the fence, so a writer that never heard of the fence (plain SQL here) still
cannot commit a row behind a watermark the exporter has passed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, insert, text
from sqlalchemy.dialects import postgresql

import api.models  # noqa: F401  (registers every table on Base.metadata)
from api.audit.chain import entry_hash
from api.db.base import Base
from api.db.engine import libpq_url
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import OrgWorld

Insert = Callable[[psycopg.Connection[Any], OrgWorld], tuple[int, str]]
APPEND_ONLY = sorted(export_tasks.APPEND_ONLY)


def test_every_numbered_column_draws_under_the_fence(engine: Engine) -> None:
    """Each append-only table's sequence column (each events partition's too) defaults to
    ``keel_export_nextval`` of the sequence its declaration names."""
    with engine.connect() as conn:
        for name in APPEND_ONLY:
            table = export_tasks.APPEND_ONLY[name]
            defaults = conn.execute(
                text(
                    "SELECT c.relname, pg_get_expr(d.adbin, d.adrelid) FROM pg_class c"
                    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = :column"
                    " LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum"
                    " WHERE c.oid = CAST(:t AS regclass)"
                    "    OR c.oid IN (SELECT relid FROM pg_partition_tree(CAST(:t AS regclass)))"
                ),
                {"column": table.seq_column, "t": name},
            ).all()
            assert defaults, name
            for relation, default in defaults:
                assert default == f"keel_export_nextval('{table.sequence}'::regclass)", relation


@pytest.mark.parametrize("name", APPEND_ONLY)
def test_the_models_leave_the_number_to_the_database(name: str) -> None:
    """An insert through SQLAlchemy names no value for the sequence column (a client-side
    ``Sequence`` would render ``nextval(...)`` itself, around the fence)."""
    table = export_tasks.APPEND_ONLY[name]
    model = Base.metadata.tables[name]
    values = {c.name: None for c in model.columns if c.name != table.seq_column}
    statement = str(insert(model).values(values).compile(dialect=postgresql.dialect()))
    assert table.seq_column not in statement.split("VALUES")[0]
    assert "nextval" not in statement


def _event(conn: psycopg.Connection[Any], org: OrgWorld) -> tuple[int, str]:
    message_id = f"fence-{uuid.uuid4().hex}"
    row = conn.execute(
        "INSERT INTO events (organization_id, message_id, event, timestamp, received_at, properties, context)"
        " VALUES (%s, %s, 'fence.tested', now(), now(), '{}', '{}') RETURNING ingest_seq",
        (org.id, message_id),
    ).fetchone()
    assert row is not None
    return row[0], f"{org.id}/{message_id}"


def _audit_entry(conn: psycopg.Connection[Any], org: OrgWorld) -> tuple[int, str]:
    """The next link of the org's chain, hashed as Keel hashes it (the trigger checks the link)."""
    head = conn.execute("SELECT seq, hash FROM audit_chain_heads WHERE chain_key = %s", (org.id,)).fetchone()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, "0" * 64)
    entry: dict[str, Any] = {
        "id": str(uuid.uuid4()), "organization_id": org.id, "seq": seq,
        "occurred_at": datetime.now(UTC).replace(microsecond=0), "actor_type": "system",
        "action": "fence.tested", "metadata": {},
    }  # fmt: skip
    row = conn.execute(
        "INSERT INTO audit_log (id, chain_key, seq, organization_id, occurred_at, actor_type, action,"
        " metadata, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, 'system', 'fence.tested', '{}', %s, %s)"
        " RETURNING export_seq",
        (entry["id"], org.id, seq, org.id, entry["occurred_at"], prev_hash, entry_hash(entry, prev_hash)),
    ).fetchone()
    assert row is not None
    return row[0], entry["id"]


def _discrepancy(run_id: uuid.UUID) -> Insert:
    def insert_one(conn: psycopg.Connection[Any], org: OrgWorld) -> tuple[int, str]:
        row = conn.execute(
            "INSERT INTO billing_discrepancies (id, run_id, detected_at, kind, severity, organization_id,"
            " stripe_customer_id, detail, repaired) VALUES (gen_random_uuid(), %s, '2001-01-01T00:00:00Z',"
            " 'stale_mirror', 'low', %s, 'cus_fence', 'a fence test', false) RETURNING export_seq, id::text",
            (run_id, org.id),
        ).fetchone()
        assert row is not None
        return row[0], row[1]

    return insert_one


def _old_run(engine: Engine) -> uuid.UUID:
    """A reconciliation run long before any other (so never the latest run of a warehouse)."""
    run_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO billing_reconciliation_runs (id, started_at, finished_at, status, repair,"
                " usage_source, stripe_customers, stripe_subscriptions, mirror_subscriptions,"
                " discrepancy_count, repaired_count, errors) VALUES (:id, '2001-01-01T00:00:00Z',"
                " '2001-01-01T00:00:01Z', 'completed', false, 'postgres', 0, 0, 0, 2, 0, '[]')"
            ),
            {"id": run_id},
        )
    return run_id


def _lake_key(table: export_tasks.AppendOnlyTable, lake: Lake) -> set[str]:
    keys = export_tasks.lake_keys(lake, table)
    return {"/".join(str(v) for v in row) for row in keys.select(list(table.key)).iter_rows()}


def _waiting_at_the_fence(conn: psycopg.Connection[Any], seconds: float = 15.0) -> bool:
    """Whether some session is waiting for an advisory lock (the exporter's exclusive fence)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        if waiting and waiting[0]:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("name", ["events", "audit_log", "billing_discrepancies"])
def test_a_row_inserted_by_plain_sql_is_never_skipped(
    name: str, database_url: str, engine: Engine, org: OrgWorld, other_org: OrgWorld, tmp_path: Path
) -> None:
    """Two writers that know nothing of the fence, as the application role: the first draws its
    number and stays open, the second draws a later one and commits. The exporter waits for the
    first instead of moving its watermark past a row it cannot see yet; both reach the lake.
    (``webhook_attempts``: tests/test_webhook_lake.py, with the same plain inserts.)"""
    url = libpq_url(database_url)
    write: Insert
    if name == "billing_discrepancies":
        write = _discrepancy(_old_run(engine))
    else:
        write = {"events": _event, "audit_log": _audit_entry}[name]
    with psycopg.connect(url, autocommit=True) as conn:
        # Today's partition exists before the writers start (creating it would queue them).
        conn.execute("SELECT keel_ensure_event_partitions(current_date, 2)")
    table = export_tasks.APPEND_ONLY[name]
    lake = Lake.open(str(tmp_path / "lake"))
    export_tasks.export_table(database_url, lake, table)  # the lake holds everything up to now
    exported: list[int] = []
    with psycopg.connect(url) as slow, psycopg.connect(url) as fast, psycopg.connect(url) as watch:
        early, early_key = write(slow, org)  # numbered first, still open
        late, late_key = write(fast, other_org)
        fast.commit()
        assert early < late
        exporter = threading.Thread(
            target=lambda: exported.append(export_tasks.export_table(database_url, lake, table).rows)
        )
        exporter.start()
        try:
            assert _waiting_at_the_fence(watch)
            assert exporter.is_alive() and not exported  # waiting at the fence, not exporting past it
        finally:
            slow.commit()
            exporter.join(60)
    assert len(exported) == 1 and exported[0] >= 2
    assert {early_key, late_key} <= _lake_key(table, lake)
    assert export_tasks.read_watermark(lake, name) >= late
