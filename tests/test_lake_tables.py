"""The lake's tables are declared once (warehouse/lake_tables.py), and the declarations agree with
the migrated database: every column is exported or excluded with a reason, every exported column
exists with a type of its kind, and the export, its Arrow schema and the warehouse's sources all
come from the declarations. (The models agree with the same migrations: tests/test_migrations.py.)"""

from __future__ import annotations

import psycopg
import pyarrow as pa
import pytest
from sqlalchemy import Connection, Engine, text

from api.db.engine import libpq_url
from pipelines.tasks import export as export_tasks
from warehouse.lake_tables import LAKE_TABLES, LakeTable
from warehouse.models import load_models

#: The Postgres types (``udt_name``) a plain column of each kind may have.
POSTGRES_TYPES = {
    "int": {"int2", "int4", "int8"},
    "text": {"varchar", "text"},
    "uuid": {"uuid"},
    "json": {"jsonb", "json"},
    "ts": {"timestamptz"},
    "bool": {"bool"},
}


#: The type OIDs the export's query may answer for each kind (int2/4/8; text, varchar; uuid;
#: jsonb, json; timestamptz; bool): uuid and JSON leave Postgres as they are, the exporter makes
#: them text.
ANSWERED_TYPES = {
    "int": {20, 21, 23},
    "text": {25, 1043},
    "uuid": {2950},
    "json": {3802, 114},
    "ts": {1184},
    "bool": {16},
}


def disagreements(conn: Connection, table: LakeTable) -> list[str]:
    """How ``table``'s declaration and its Postgres table differ (nothing: they agree)."""
    found = dict(
        conn.execute(
            text(
                "SELECT column_name, udt_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = :t"
            ),
            {"t": table.name},
        ).all()
    )
    if not found:
        return [f"{table.name}: no such table in Postgres"]
    declared = {c.name: c for c in table.columns}
    covered = {name for name in declared if name in found}
    problems = [
        f"{table.name}.{name}: in Postgres but neither a column nor `excluded` in warehouse/lake_tables.py"
        for name in sorted(set(found) - covered - set(table.excluded))
    ]
    problems += [
        f"{table.name}.{name}: excluded but not in Postgres"
        for name in sorted(set(table.excluded) - set(found))
    ]
    problems += [
        f"{table.name}.{name}: both exported and excluded" for name in sorted(covered & set(table.excluded))
    ]
    for column in table.columns:
        if column.expr is not None:
            continue
        if column.name not in found:
            problems.append(f"{table.name}.{column.name}: declared but not in Postgres")
        elif found[column.name] not in POSTGRES_TYPES[column.kind]:
            problems.append(
                f"{table.name}.{column.name}: declared {column.kind}, Postgres has {found[column.name]}"
            )
    named = set(table.key) | set(table.dictionary)
    if table.by_sequence is not None:
        named |= {table.by_sequence.column, table.by_sequence.date_column}
    if table.by_version is not None:
        named |= {table.by_version.column}
    problems += [f"{table.name}: {name} is named but not a column" for name in sorted(named - set(declared))]
    return problems


def test_every_lake_table_agrees_with_its_postgres_table(engine: Engine) -> None:
    with engine.connect() as conn:
        assert [p for table in LAKE_TABLES.values() for p in disagreements(conn, table)] == []
        for table in LAKE_TABLES.values():
            if table.incremental is not None:  # the sequence its numbers come from exists
                assert conn.execute(
                    text("SELECT to_regclass(:s) IS NOT NULL"), {"s": table.incremental.sequence}
                ).scalar()


def test_a_column_added_by_a_migration_but_not_declared_is_reported(engine: Engine) -> None:
    """What a migration that adds a column without its line in lake_tables.py looks like here."""
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        conn.execute(text("ALTER TABLE memberships ADD COLUMN nickname text"))
        conn.execute(
            text(
                "ALTER TABLE organizations ALTER COLUMN deleted_at TYPE date, DROP COLUMN stripe_customer_id"
            )
        )
        problems = disagreements(conn, LAKE_TABLES["memberships"]) + disagreements(
            conn, LAKE_TABLES["organizations"]
        )
        transaction.rollback()
    assert problems == [
        "memberships.nickname: in Postgres but neither a column nor `excluded` in warehouse/lake_tables.py",
        "organizations.stripe_customer_id: declared but not in Postgres",
        "organizations.deleted_at: declared ts, Postgres has date",
    ]


@pytest.mark.parametrize("name", sorted(LAKE_TABLES))
def test_the_export_reads_each_declared_column_as_declared(name: str, database_url: str) -> None:
    """The derived query runs as the application role, and Postgres answers every column, in
    order, in a type of its kind (uuid and JSON as they are: the exporter writes their text)."""
    table = LAKE_TABLES[name]
    assert [f.name for f in table.arrow_schema] == [c.name for c in table.columns]
    with psycopg.connect(libpq_url(database_url)) as conn, conn.cursor() as cursor:
        cursor.execute(f"{table.query} LIMIT 0")  # type: ignore[arg-type]
        answered = [(d.name, d.type_code) for d in cursor.description or []]
    assert [
        (c.name, oid in ANSWERED_TYPES[c.kind]) for c, (_, oid) in zip(table.columns, answered, strict=True)
    ] == [(c.name, True) for c in table.columns]
    assert [n for n, _ in answered] == [c.name for c in table.columns]


def test_the_exporter_and_the_warehouse_read_the_declarations() -> None:
    """One list of tables: what is exported (by sequence, by version or as a snapshot), what has an
    empty ``_schema`` file, and what the warehouse's models may read."""
    modes = [set(export_tasks.APPEND_ONLY), set(export_tasks.VERSIONED), set(export_tasks.SNAPSHOTS)]
    assert set().union(*modes) == set(LAKE_TABLES) and sum(map(len, modes)) == len(LAKE_TABLES)
    assert set(export_tasks.INCREMENTAL) == set(export_tasks.APPEND_ONLY) | set(export_tasks.VERSIONED)
    for name, table in export_tasks.INCREMENTAL.items():
        assert table.schema.equals(LAKE_TABLES[name].arrow_schema)
        assert table.versioned == (LAKE_TABLES[name].mode == "version")
    for name, snapshot in export_tasks.SNAPSHOTS.items():
        assert snapshot.schema.equals(LAKE_TABLES[name].arrow_schema)
    sources = set().union(*(m.sources for m in load_models()))
    assert sources == set(LAKE_TABLES), "a model reads an undeclared table, or a declared one is read by none"
    assert all(f.type != pa.null() for t in LAKE_TABLES.values() for f in t.arrow_schema)


#: uuids and JSON values whose text forms are easy to get wrong (case, the high bit, escapes,
#: non-ASCII, key order and duplicates, numbers, nesting, empty and null values).
TEXT_FORMS = """
SELECT * FROM (VALUES
  (1, '00000000-0000-0000-0000-000000000000'::uuid, '{}'::jsonb, '[]'::json),
  (2, 'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'::uuid, '{"b": 1, "a": [1.50, -0, 1e3], "a": "dup"}', '{"b": 1,  "a": 2}'),
  (3, '80000000-0000-7000-8000-00000000000a'::uuid, '{"é": "\\u00e9 \\" \\\\ \\n \\t", "n": null}', 'null'),
  (4, NULL, NULL, NULL),
  (5, '019a0f5e-7b3c-7def-8abc-0123456789ab'::uuid, '"text"', '"✓ snowman ☃"'),
  (6, '7fffffff-ffff-ffff-ffff-ffffffffffff'::uuid, '{"deep": {"deeper": [{"x": true}, false, 0.000001]}}', '123456789012345678901234567890')
) AS t(n, id, doc, raw)
"""


def test_uuid_and_json_land_in_the_lake_as_postgres_writes_them_as_text(database_url: str) -> None:
    """The exporter makes the text of uuids (from their 16 bytes) and of JSON (jsonb's binary form):
    it is exactly what Postgres's own ``::text`` writes, nulls included."""
    schema = pa.schema([("n", pa.int64()), ("id", pa.string()), ("doc", pa.string()), ("raw", pa.string())])
    with export_tasks._open_reader(database_url) as reader:
        lake = export_tasks._read_arrow(reader, TEXT_FORMS, schema)
    with psycopg.connect(libpq_url(database_url)) as conn:
        postgres = conn.execute(
            f"SELECT n, id::text, doc::text, raw::text FROM ({TEXT_FORMS}) AS v"
        ).fetchall()
    assert lake.schema == schema
    assert sorted(lake.to_pylist(), key=lambda r: r["n"]) == [
        dict(zip(schema.names, row, strict=True)) for row in sorted(postgres)
    ]


@pytest.mark.parametrize("few", [export_tasks._FEW_UUIDS, 0], ids=["python", "duckdb"])
def test_a_dictionary_uuid_column_is_written_once_per_value_as_postgres_writes_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """A uuid column declared ``dictionary`` is formatted once per distinct value (in Python for a
    few, by DuckDB for many) and taken per row: the same text as Postgres's ``::text``, in row
    order, nulls included."""
    monkeypatch.setattr(export_tasks, "_FEW_UUIDS", few)
    query = f"SELECT v.n * 10 + k AS n, v.id FROM ({TEXT_FORMS}) AS v, generate_series(1, 3) AS k"
    schema = pa.schema([("n", pa.int64()), ("id", pa.string())])
    with export_tasks._open_reader(database_url) as reader, reader.cursor() as cursor:
        cursor.execute(query)
        batches = [export_tasks.to_lake(b, schema, ("id",)) for b in cursor.fetch_record_batch()]
    with psycopg.connect(libpq_url(database_url)) as conn:
        postgres = conn.execute(f"SELECT n, id::text FROM ({query}) AS q").fetchall()
    lake = pa.Table.from_batches(batches, schema=schema)
    assert sorted(lake.to_pylist(), key=lambda r: r["n"]) == [{"n": n, "id": i} for n, i in sorted(postgres)]
