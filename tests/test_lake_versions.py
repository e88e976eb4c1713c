"""Organizations and people leave Postgres by version (warehouse.lake_tables.ByVersion): an export
writes only the rows changed since the last one, a change in flight at the fence is never skipped,
the version is the database's own (a trigger, under the fence; rows are never deleted), and the
warehouse built from the versions equals Postgres."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from api.db.engine import libpq_url
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import OrgWorld, make_org, write_lake_rows
from tests.test_export_fence import _waiting_at_the_fence
from warehouse.build import build_warehouse

pytestmark = pytest.mark.pipelines

VERSIONED = (export_tasks.ORGANIZATIONS, export_tasks.PEOPLE)


def identify(client: httpx.Client, world: OrgWorld, *calls: dict[str, Any]) -> None:
    batch = [{"type": "identify", "messageId": str(uuid.uuid4()), **c} for c in calls]
    answer = client.post(
        "/segment/v1/batch",
        json={"batch": batch},
        headers={"Authorization": "Basic " + base64.b64encode(f"{world.ingest_key}:".encode()).decode()},
    )
    assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text


def export(database_url: str, lake: Lake) -> dict[str, export_tasks.ExportResult]:
    return {t.name: export_tasks.export_table(database_url, lake, t) for t in VERSIONED}


def written(lake: Lake, result: export_tasks.ExportResult, *key: str) -> list[tuple[Any, ...]]:
    """The keys of the rows a run wrote, as they are in its files."""
    rows = []
    for path in result.files:
        table = export_tasks.lake_read(lake, path, list(key))
        rows += list(zip(*(table[k].to_pylist() for k in key), strict=True))
    return rows


def mine(rows: list[tuple[Any, ...]], ids: set[str]) -> list[tuple[Any, ...]]:
    return sorted(r for r in rows if r[0] in ids)


def test_an_export_writes_only_what_changed_and_the_marts_equal_postgres(
    client: httpx.Client, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    a, b = (make_org(client, engine, roles=("owner",)) for _ in range(2))
    ours = {a.id, b.id}
    identify(
        client,
        a,
        {"userId": "p1", "traits": {"plan": "free"}},
        {"userId": "p2", "traits": {"plan": "pro"}},
        {"anonymousId": "anon-x", "traits": {"theme": "dark"}},
    )
    lake = Lake.open(str(tmp_path / "lake"))
    export_tasks.write_schemas(lake)
    # What an older Keel left: a daily copy of each table. The first complete run removes it.
    for name in ("organizations", "people"):
        legacy = {"id": a.id, "organization_id": a.id, "user_id": "legacy", "name": "Legacy"}
        write_lake_rows(tmp_path / "lake", name, [legacy], "snapshot_date=2026-01-01")
    first = export(database_url, lake)
    assert not [p for t in VERSIONED for p in lake.list_files(t.name) if "snapshot_date=" in p]
    assert mine(written(lake, first["organizations"], "id"), ours) == sorted((o,) for o in ours)
    assert mine(written(lake, first["people"], "organization_id", "user_id"), ours) == [
        (a.id, "anon-x"),
        (a.id, "p1"),
        (a.id, "p2"),
    ]

    # Nothing changed: nothing is written again.
    again = export(database_url, lake)
    assert {n: (r.rows, r.files) for n, r in again.items()} == {n: (0, []) for n in again}

    # One org renamed, one person's traits changed, one person new, a replayed call (no change).
    assert (
        client.patch(f"/v1/orgs/{a.id}", json={"name": "Renamed"}, headers=a.headers("owner")).status_code
        == 200
    )
    identify(client, a, {"userId": "p1", "traits": {"plan": "team"}}, {"userId": "p3", "traits": {}})
    with engine.begin() as conn:  # an update that changes nothing is no new version
        conn.execute(text("UPDATE people SET traits = traits WHERE organization_id = :o"), {"o": a.id})
    changed = export(database_url, lake)
    assert mine(written(lake, changed["organizations"], "id"), ours) == [(a.id,)]
    assert mine(written(lake, changed["people"], "organization_id", "user_id"), ours) == [
        (a.id, "p1"),
        (a.id, "p3"),
    ]
    assert all(len(r.files) == 1 for r in changed.values())  # one file per range, unpartitioned

    # A soft delete is a change like any other.
    assert client.delete(f"/v1/orgs/{b.id}", headers=b.headers("owner")).status_code == 204
    deleted = export(database_url, lake)
    assert mine(written(lake, deleted["organizations"], "id"), ours) == [(b.id,)]

    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(str(tmp_path / "lake"), warehouse, as_of=datetime.now(UTC).date())
    with engine.connect() as conn:
        orgs = {
            str(r[0]): (r[1], r[2], r[3], r[4])
            for r in conn.execute(
                text("SELECT id, name, slug, deleted_at, traits FROM organizations WHERE id IN (:a, :b)"),
                {"a": a.id, "b": b.id},
            )
        }
        people = {
            r[0]: (r[1], r[2], r[3], r[4])
            for r in conn.execute(
                text(
                    "SELECT user_id, traits, first_seen_at, last_seen_at, anonymous FROM people"
                    " WHERE organization_id = :o"
                ),
                {"o": a.id},
            )
        }
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        dim_orgs = {
            r[0]: (r[1], r[2], r[3], json.loads(r[4]))
            for r in con.execute(
                "SELECT organization_id, name, slug, deleted_at, traits FROM dim_orgs WHERE organization_id IN (?, ?)",
                [a.id, b.id],
            ).fetchall()
        }
        dim_people = {
            r[0]: (json.loads(r[1]), r[2], r[3], r[4])
            for r in con.execute(
                "SELECT user_id, traits, first_seen_at, last_seen_at, anonymous FROM dim_people WHERE organization_id = ?",
                [a.id],
            ).fetchall()
        }
        versions = con.execute("SELECT count(*) FROM lake.organizations WHERE id = ?", [a.id]).fetchone()
    finally:
        con.close()
    assert dim_orgs == orgs and orgs[a.id][0] == "Renamed" and orgs[b.id][2] is not None
    assert dim_people == people and people["p1"][0] == {"plan": "team"} and people["anon-x"][3] is True
    assert versions == (2,)  # created, renamed: both in the lake, the latest is the state


def _rename_org(conn: psycopg.Connection[Any], world: OrgWorld, name: str) -> None:
    conn.execute("UPDATE organizations SET name = %s WHERE id = %s", (name, world.id))


def _retrait_person(conn: psycopg.Connection[Any], world: OrgWorld, name: str) -> None:
    conn.execute(
        "INSERT INTO people (organization_id, user_id, traits, first_seen_at, last_seen_at)"
        " VALUES (%s, 'fence-person', '{}', now(), now())"
        " ON CONFLICT (organization_id, user_id) DO UPDATE SET traits = jsonb_build_object('name', %s::text)",
        (world.id, name),
    )


@pytest.mark.parametrize("name", ["organizations", "people"])
def test_a_change_in_flight_at_the_fence_is_never_skipped(
    name: str, database_url: str, org: OrgWorld, other_org: OrgWorld, tmp_path: Path
) -> None:
    """Two writers in plain SQL, as the application role: the first changes a row and stays open,
    the second changes another and commits. The exporter waits for the first; both changes reach
    the lake, each row in its latest state."""
    table = export_tasks.VERSIONED[name]
    change = {"organizations": _rename_org, "people": _retrait_person}[name]
    url = libpq_url(database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        for world in (org, other_org):
            change(conn, world, "before")
    lake = Lake.open(str(tmp_path / "lake"))
    export_tasks.export_table(database_url, lake, table)
    exported: list[int] = []
    with psycopg.connect(url) as slow, psycopg.connect(url) as fast, psycopg.connect(url) as watch:
        change(slow, org, "slow")  # versioned first, still open
        change(fast, other_org, "fast")
        fast.commit()
        exporter = threading.Thread(
            target=lambda: exported.append(export_tasks.export_table(database_url, lake, table).rows)
        )
        exporter.start()
        try:
            assert _waiting_at_the_fence(watch)
            assert exporter.is_alive() and not exported
        finally:
            slow.commit()
            exporter.join(60)
    assert len(exported) == 1 and exported[0] >= 2
    con = duckdb.connect()
    files = [f"'{p}'" for p in lake.list_files(name)]
    states = dict(
        con.execute(
            f"SELECT {'id' if name == 'organizations' else 'organization_id'},"
            f" {'name' if name == 'organizations' else 'traits'} FROM read_parquet([{', '.join(files)}])"
            f" QUALIFY row_number() OVER (PARTITION BY {', '.join(table.key)} ORDER BY lake_version DESC) = 1"
            + ("" if name == "organizations" else " AND user_id = 'fence-person'")
        ).fetchall()
    )
    got = {k: v if name == "organizations" else json.loads(v).get("name") for k, v in states.items()}
    assert got[org.id] == "slow" and got[other_org.id] == "fast"


def test_the_version_is_the_databases_and_rows_are_never_deleted(
    database_url: str, engine: Engine, org: OrgWorld
) -> None:
    """As the application role: a version written by hand is replaced by the next number, and
    neither table can lose a row (a deleted row would have no version to export)."""

    def version() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT lake_version FROM organizations WHERE id = :o"), {"o": org.id}
                ).scalar()
            )

    before = version()
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("UPDATE organizations SET lake_version = 1 WHERE id = %s", (org.id,))
        assert version() == before  # changing only the version is no change
        conn.execute("UPDATE organizations SET lake_version = 1, name = name || '!' WHERE id = %s", (org.id,))
        assert version() > before
        for statement in (
            "DELETE FROM organizations WHERE id = %s",
            "DELETE FROM people WHERE organization_id = %s",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, (org.id,))
