"""Build the warehouse: ``dbt build`` of the dbt project (``warehouse/dbt``) into a new DuckDB file
whose ``lake`` schema holds the Parquet lake, checked (every schema.yml test, every documented
column against the real ones), documented (``dbt docs generate``: the catalog ``keel warehouse
describe`` reads), then moved into place atomically.

Analysts and the API only ever open a complete file; a failed build (a failed dbt test: its name
and offending rows are in the error) leaves the previous one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from warehouse.dbt_project import LAKE_SCHEMA, PROJECT_DIR
from warehouse.lake_tables import LAKE_TABLES
from warehouse.models import Model, load_models
from warehouse.storage import LakeStorage, open_lake_storage

_DBT_LOCK = threading.Lock()
#: How many offending rows of a failed dbt test the error shows.
FAILED_ROWS_SHOWN = 5


class WarehouseError(RuntimeError):
    """The warehouse cannot be built from this lake."""


@dataclass
class BuildResult:
    path: Path
    as_of: date
    tables: dict[str, int]
    seconds: float


def _files(filesystem: pafs.FileSystem, root: str, name: str) -> list[str]:
    selector = pafs.FileSelector(f"{root}/{name}", recursive=True, allow_not_found=True)
    # A name starting with "." is a file still being written (or left by a killed writer): skip it.
    return sorted(
        i.path
        for i in filesystem.get_file_info(selector)
        if i.is_file and i.path.endswith(".parquet") and not i.base_name.startswith(".")
    )


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def lay_lake(con: duckdb.DuckDBPyConnection, lake_url: str, *, s3_endpoint: str | None = None) -> None:
    """The dbt sources: each table of ``warehouse.lake_tables`` as ``lake.<name>`` in ``con``'s
    file: a view over the lake's Parquet files, a copy of remote ones, or the empty shape of an
    optional table no export has written yet."""
    storage = open_lake_storage(lake_url, s3_endpoint=s3_endpoint)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {LAKE_SCHEMA}")
    for name, table in LAKE_TABLES.items():
        relation = f"{LAKE_SCHEMA}.{name}"
        con.execute(f"DROP VIEW IF EXISTS {relation}")
        con.execute(f"DROP TABLE IF EXISTS {relation}")
        files = _files(storage.fs, storage.root, name)
        if not files:
            schema_file = f"{storage.root}/_schema/{name}.parquet"
            if storage.fs.get_file_info(schema_file).is_file:
                files = [schema_file]
        if files and not storage.remote:
            listing = ", ".join(_quote(f) for f in files)
            con.execute(
                f"CREATE VIEW {relation} AS SELECT * FROM"
                f" read_parquet([{listing}], filename = true, union_by_name = true)"
            )
        elif files:
            _copy_in(con, relation, storage, files)
        elif table.optional:
            con.execute(f"CREATE TABLE {relation} ({table.duckdb_columns})")
        else:
            raise WarehouseError(
                f"the lake at {lake_url} has no {name!r} data yet: run the export-lake flow first"
            )


def _copy_in(con: duckdb.DuckDBPyConnection, table: str, storage: LakeStorage, files: list[str]) -> None:
    """Copy remote Parquet files into ``table``, as ``read_parquet(files, filename = true,
    union_by_name = true)`` would read them locally.

    DuckDB cannot reach object storage here (its httpfs extension is downloaded at run time), so
    pyarrow's filesystem reads the files: one at a time, so memory holds one file, not the lake.
    """
    schema = pa.unify_schemas([pq.read_schema(f, filesystem=storage.fs) for f in files])
    empty = schema.append(pa.field("filename", pa.string())).empty_table()
    con.register("_lake_file", empty)
    con.execute(f"CREATE TABLE {table} AS SELECT * FROM _lake_file")
    for path in files:
        part = pq.read_table(path, filesystem=storage.fs)
        part = part.append_column("filename", pa.array([storage.url_of(path)] * part.num_rows, pa.string()))
        con.register("_lake_file", part)
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _lake_file")
    con.unregister("_lake_file")


def write_profile(directory: Path, database: Path, *, threads: int = 1) -> None:
    """A dbt profile (``profiles.yml`` in ``directory``) whose target is the DuckDB file ``database``."""
    directory.mkdir(parents=True, exist_ok=True)
    profile = {
        "keel": {
            "target": "build",
            "outputs": {
                "build": {
                    "type": "duckdb",
                    "path": str(database),
                    "threads": threads,
                    "settings": {"TimeZone": "UTC"},
                }
            },
        }
    }
    (directory / "profiles.yml").write_text(yaml.safe_dump(profile))


def run_dbt(
    args: list[str], work_dir: Path, *, on_event: Callable[[Any], None] | None = None, manifest: Any = None
) -> Any:
    """``dbt ARGS`` on Keel's project, in-process (dbt's programmatic runner), with the profile,
    target and logs of ``work_dir`` (so concurrent builds and the package directory stay apart);
    ``manifest``, the project as parsed before (:func:`parsed_project`), skips dbt's parse."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    from dbt.cli.main import dbtRunner

    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    runner = dbtRunner(manifest=manifest, callbacks=[on_event] if on_event else [])
    with _DBT_LOCK:  # dbt and dbt-duckdb keep process-wide state: one invocation at a time
        try:
            return _invoke(runner, args, work_dir)
        finally:
            # dbt-duckdb keeps its database open for the process's next invocation: close it, so
            # the file can be swapped in and opened by readers (a lock is per process).
            with DuckDBConnectionManager._LOCK:
                if DuckDBConnectionManager._ENV is not None:
                    DuckDBConnectionManager._ENV.close()
                    DuckDBConnectionManager._ENV = None


def _invoke(runner: Any, args: list[str], work_dir: Path) -> Any:
    return runner.invoke(
        [
            "--no-send-anonymous-usage-stats",
            "--no-version-check",
            "--quiet",
            *args,
            "--project-dir",
            str(PROJECT_DIR),
            "--profiles-dir",
            str(work_dir),
            "--target-path",
            str(work_dir / "target"),
            "--log-path",
            str(work_dir / "logs"),
        ]
    )


#: The file a build writes, in the build's work directory beside the warehouse, then renamed over it.
BUILDING_FILE = "keel.duckdb"

#: The project as dbt parsed it, by the state of its files: dbt's own partial parse starts over
#: whenever the profile's database path or the vars differ, which they do for every build (a new
#: file each time, the day built for). Nothing in the project's parse depends on either (``as_of``
#: is rendered when a model is compiled, with the build's own vars), so one parse serves the
#: process's builds until a file of the project changes: (that state, the manifest) of the last
#: parse.
_parsed: tuple[tuple[tuple[str, int, int], ...], Any] | None = None


def _project_state() -> tuple[tuple[str, int, int], ...]:
    stats = sorted((p, p.stat()) for p in PROJECT_DIR.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(PROJECT_DIR)), st.st_mtime_ns, st.st_size) for p, st in stats)


def parsed_project(work_dir: Path) -> Any:
    """Keel's dbt project parsed (dbt's ``Manifest``), once per process and state of its files."""
    global _parsed
    state = _project_state()
    with _DBT_LOCK:
        last = _parsed
    if last is not None and last[0] == state:
        return last[1]
    parsed = run_dbt(["parse"], work_dir)
    if not parsed.success:
        raise WarehouseError(f"dbt could not parse the project: {parsed.exception or parsed.result}")
    with _DBT_LOCK:
        _parsed = (state, parsed.result)
    return parsed.result


def build_warehouse(
    lake_url: str,
    warehouse_path: Path,
    *,
    as_of: date | None = None,
    on_model: Callable[[str], None] | None = None,
    s3_endpoint: str | None = None,
) -> BuildResult:
    """``dbt build`` into a fresh file, check the documented columns, generate the catalog, and
    replace ``warehouse_path``. ``on_model`` is called with each model's name as dbt finishes it.

    ``s3_endpoint`` (``KEEL_LAKE_S3_ENDPOINT``) serves an ``s3://`` lake; see ``warehouse.storage``."""
    started = time.perf_counter()
    as_of = as_of or datetime.now(UTC).date()
    # Absolute: dbt reads relative target and profile paths from its project directory.
    warehouse_path = Path(warehouse_path).resolve()
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    work_dir = warehouse_path.with_name(f".{warehouse_path.name}.dbt")
    work_dir.mkdir(exist_ok=True)
    # One name for every build's file: DuckDB names the file's catalog after it, and the parsed
    # project (parsed_project) holds the catalog its models are built in.
    building = work_dir / BUILDING_FILE
    for stale in (building, building.with_name(building.name + ".wal")):
        stale.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(building))
        try:
            con.execute("SET TimeZone = 'UTC'")
            try:
                lay_lake(con, lake_url, s3_endpoint=s3_endpoint)
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise WarehouseError(f"the lake at {lake_url} is unreachable: {exc}") from exc
        finally:
            con.close()
        write_profile(work_dir, building)

        def on_event(event: Any) -> None:
            if on_model and event.info.name == "LogModelResult":
                on_model(event.data.node_info.node_name)

        manifest = parsed_project(work_dir)
        built = run_dbt(
            ["build", "--vars", json.dumps({"as_of": as_of.isoformat()})],
            work_dir,
            on_event=on_event,
            manifest=manifest,
        )
        _raise_for(built, building)
        documented = run_dbt(["docs", "generate", "--no-compile"], work_dir, manifest=manifest)
        _raise_for(documented, building)
        con = duckdb.connect(str(building))
        try:
            models = load_models()
            check_columns(con, models)
            write_catalog(con, dbt_docs(work_dir))
            tables = {
                m.name: con.execute(f"SELECT count(*) FROM {m.name}").fetchone()[0]  # type: ignore[index]
                for m in models
                if m.kind == "mart"
            }
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(building, warehouse_path)
    except duckdb.Error as exc:
        building.unlink(missing_ok=True)
        raise WarehouseError(f"building the warehouse failed: {exc}") from exc
    except BaseException:
        building.unlink(missing_ok=True)
        raise
    return BuildResult(path=warehouse_path, as_of=as_of, tables=tables, seconds=time.perf_counter() - started)


def _raise_for(invoked: Any, database: Path) -> None:
    """A failed dbt invocation as a ``WarehouseError``: each failed test's name and offending rows,
    each failed model's error."""
    if invoked.success:
        return
    if invoked.exception is not None:
        raise WarehouseError(f"dbt failed: {invoked.exception}") from invoked.exception
    problems = []
    failed_tests = []
    for result in getattr(invoked.result, "results", None) or []:
        status = str(getattr(result.status, "value", result.status))
        if status not in ("fail", "error"):
            continue
        node = result.node
        if node.resource_type == "test" and status == "fail":
            failed_tests.append((node.name, node.compiled_code, result.failures))
        else:
            problems.append(f"{node.resource_type} {node.name}: {result.message}")
    if failed_tests:
        con = duckdb.connect(str(database), read_only=True)
        try:
            for name, sql, failures in failed_tests:
                rows = con.execute(f"SELECT * FROM ({sql}) LIMIT {FAILED_ROWS_SHOWN}")
                columns = [d[0] for d in rows.description]
                shown = "; ".join(
                    ", ".join(f"{c}={v}" for c, v in zip(columns, row, strict=True))
                    for row in rows.fetchall()
                )
                problems.append(f"dbt test {name} failed ({failures} rows), e.g. {shown}")
        finally:
            con.close()
    raise WarehouseError("the warehouse's dbt build failed: " + " | ".join(problems or ["unknown failure"]))


def check_columns(con: duckdb.DuckDBPyConnection, models: list[Model]) -> None:
    """Every column a model documents exists, and every column of a model is documented."""
    problems = []
    for m in models:
        real = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
                [m.name],
            ).fetchall()
        ]
        missing = [c for c in m.columns if c not in real]
        undocumented = [c for c in real if c not in m.columns]
        if missing:
            problems.append(f"{m.name} documents columns it does not have: {', '.join(missing)}")
        if undocumented:
            problems.append(f"{m.name} has undocumented columns: {', '.join(undocumented)}")
    if problems:
        raise WarehouseError("the warehouse's docs and columns differ: " + "; ".join(problems))


def dbt_docs(work_dir: Path) -> list[Model]:
    """The models as ``dbt docs generate`` documented them: descriptions and meta from the
    manifest, columns in the catalog's order (the real ones) with the documented descriptions."""
    from warehouse.models import KINDS

    target = work_dir / "target"
    manifest = json.loads((target / "manifest.json").read_text())
    catalog = json.loads((target / "catalog.json").read_text())
    models = []
    for uid, entry in sorted(catalog["nodes"].items(), key=lambda kv: kv[1]["metadata"]["name"]):
        node = manifest["nodes"].get(uid)
        if node is None or node["resource_type"] != "model":
            continue
        documented = {name: c.get("description", "") for name, c in node["columns"].items()}
        real = sorted(entry["columns"].values(), key=lambda c: c["index"])
        folder = node["fqn"][1] if len(node["fqn"]) > 2 else ""
        models.append(
            Model(
                name=node["name"],
                kind=KINDS.get(folder, folder),
                sql=node.get("raw_code", ""),
                grain=node["meta"].get("grain", ""),
                key=tuple(node["meta"].get("key", ())),
                description=node.get("description", ""),
                columns={c["name"]: documented.get(c["name"], "") for c in real},
            )
        )
    return models


def write_catalog(con: duckdb.DuckDBPyConnection, models: list[Model]) -> None:
    """``keel_catalog`` and ``keel_columns``: what ``keel warehouse describe`` and docs/warehouse.md show."""
    con.execute(
        "CREATE OR REPLACE TABLE keel_catalog"
        " (name VARCHAR, kind VARCHAR, grain VARCHAR, key VARCHAR, description VARCHAR)"
    )
    con.execute(
        "CREATE OR REPLACE TABLE keel_columns (table_name VARCHAR, column_name VARCHAR, description VARCHAR)"
    )
    for m in models:
        con.execute(
            "INSERT INTO keel_catalog VALUES (?, ?, ?, ?, ?)",
            [m.name, m.kind, m.grain, ", ".join(m.key), m.description],
        )
        for column, description in m.columns.items():
            con.execute("INSERT INTO keel_columns VALUES (?, ?, ?)", [m.name, column, description])


def main(argv: list[str]) -> int:
    """dbt by hand against the current lake (``make dbt ARGS="build -s stg_events+"``): lays the
    lake of ``KEEL_LAKE_URL`` (default ``.keel/lake``) into ``KEEL_DBT_DATABASE`` (default
    ``.keel/dbt-dev.duckdb``, never the served warehouse) and runs ``dbt ARGS`` on Keel's project."""
    database = Path(os.environ.get("KEEL_DBT_DATABASE", ".keel/dbt-dev.duckdb")).resolve()
    lake_url = os.environ.get("KEEL_LAKE_URL", ".keel/lake")
    database.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database))
    try:
        lay_lake(con, lake_url, s3_endpoint=os.environ.get("KEEL_LAKE_S3_ENDPOINT"))
    finally:
        con.close()
    work_dir = database.with_name(f".{database.name}.dbt")
    write_profile(work_dir, database)
    invoked = run_dbt(argv or ["build"], work_dir)
    print(f"dbt {' '.join(argv or ['build'])}: {'ok' if invoked.success else 'failed'} (in {database})")
    return 0 if invoked.success else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
