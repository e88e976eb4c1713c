"""Build the warehouse: a new DuckDB file with staging views over the lake and materialized marts,
checked (every mart's key unique and not null), then moved into place atomically.

Analysts and the API only ever open a complete file; a failed build leaves the previous one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from warehouse import rules
from warehouse.lake_tables import LAKE_TABLES
from warehouse.models import Model, load_models
from warehouse.storage import LakeStorage, open_lake_storage

#: The build's own parameters, a one-row table the marts read (``SELECT as_of FROM keel_params``);
#: in the catalog beside the models, so ``keel warehouse describe`` lists it too.
PARAMS = Model(
    name="keel_params",
    kind="parameters",
    sql="SELECT CAST(? AS DATE) AS as_of, now() AS built_at",
    grain="one row: the parameters this warehouse was built with",
    key=(),
    description="The as-of date every mart is computed for, and when the file was built.",
    columns={
        "as_of": "the UTC date the marts are computed for (their last day); filter with "
        "`(SELECT as_of FROM keel_params)`",
        "built_at": "when this warehouse file was built",
    },
)


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


def _source_relations(
    con: duckdb.DuckDBPyConnection, lake_url: str, names: set[str], *, s3_endpoint: str | None = None
) -> dict[str, str]:
    """The relation each ``{source}`` placeholder reads: Parquet files of the lake, or the empty
    shape of an optional one (``warehouse.lake_tables``)."""
    unknown = sorted(names - LAKE_TABLES.keys())
    if unknown:
        raise WarehouseError(f"the models read {unknown}, which warehouse/lake_tables.py does not declare")
    storage = open_lake_storage(lake_url, s3_endpoint=s3_endpoint)
    relations = {}
    for name in sorted(names):
        files = _files(storage.fs, storage.root, name)
        if not files:
            schema_file = f"{storage.root}/_schema/{name}.parquet"
            if storage.fs.get_file_info(schema_file).is_file:
                files = [schema_file]
        if files and not storage.remote:
            listing = ", ".join(_quote(f) for f in files)
            relations[name] = f"read_parquet([{listing}], filename = true, union_by_name = true)"
        elif files:
            _copy_in(con, f"raw_{name}", storage, files)
            relations[name] = f"raw_{name}"
        elif LAKE_TABLES[name].optional:
            con.execute(f"CREATE TABLE raw_{name} ({LAKE_TABLES[name].duckdb_columns})")
            relations[name] = f"raw_{name}"
        else:
            raise WarehouseError(
                f"the lake at {lake_url} has no {name!r} data yet: run the export-lake flow first"
            )
    return relations


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


def build_warehouse(
    lake_url: str,
    warehouse_path: Path,
    *,
    as_of: date | None = None,
    on_model: Callable[[Model], None] | None = None,
    s3_endpoint: str | None = None,
) -> BuildResult:
    """Build every model into a fresh file, check the marts' keys, and replace ``warehouse_path``.

    ``s3_endpoint`` (``KEEL_LAKE_S3_ENDPOINT``) serves an ``s3://`` lake; see ``warehouse.storage``."""
    started = time.perf_counter()
    as_of = as_of or datetime.now(UTC).date()
    models = load_models()
    warehouse_path = Path(warehouse_path)
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    building = warehouse_path.with_name(f".{warehouse_path.name}.building")
    for stale in (building, building.with_name(building.name + ".wal")):
        stale.unlink(missing_ok=True)
    tables: dict[str, int] = {}
    try:
        con = duckdb.connect(str(building))
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"CREATE TABLE {PARAMS.name} AS {PARAMS.sql}", [as_of])
            for rule in rules.RULES:  # the business rules, as macros the marts (and analysts) call
                con.execute(rule.macro())
            sources = set().union(*(m.sources for m in models))
            try:
                relations = _source_relations(con, lake_url, sources, s3_endpoint=s3_endpoint)
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise WarehouseError(f"the lake at {lake_url} is unreachable: {exc}") from exc
            for model in models:
                sql = model.sql.format(**relations)
                kind = "VIEW" if model.kind == "staging" else "TABLE"
                con.execute(f"CREATE {kind} {model.name} AS {sql}")
                if model.kind == "mart":
                    check_keys(con, model)
                    tables[model.name] = con.execute(f"SELECT count(*) FROM {model.name}").fetchone()[0]  # type: ignore[index]
                if on_model:
                    on_model(model)
            write_catalog(con, [PARAMS, *models])
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


def check_keys(con: duckdb.DuckDBPyConnection, model: Model) -> None:
    """A mart's key is unique and never null; a build that breaks that fails."""
    key = ", ".join(model.key)
    nulls = " OR ".join(f"{k} IS NULL" for k in model.key)
    null_rows = con.execute(f"SELECT count(*) FROM {model.name} WHERE {nulls}").fetchone()[0]  # type: ignore[index]
    duplicates = con.execute(
        f"SELECT count(*) FROM (SELECT {key} FROM {model.name} GROUP BY {key} HAVING count(*) > 1)"
    ).fetchone()[0]  # type: ignore[index]
    if null_rows or duplicates:
        raise WarehouseError(
            f"{model.name}: key ({key}) has {null_rows} null and {duplicates} duplicated values"
        )


def write_catalog(con: duckdb.DuckDBPyConnection, models: list[Model]) -> None:
    con.execute(
        "CREATE TABLE keel_catalog"
        " (name VARCHAR, kind VARCHAR, grain VARCHAR, key VARCHAR, description VARCHAR)"
    )
    con.execute("CREATE TABLE keel_columns (table_name VARCHAR, column_name VARCHAR, description VARCHAR)")
    for m in models:
        con.execute(
            "INSERT INTO keel_catalog VALUES (?, ?, ?, ?, ?)",
            [m.name, m.kind, m.grain, ", ".join(m.key), m.description],
        )
        for column, description in m.columns.items():
            con.execute("INSERT INTO keel_columns VALUES (?, ?, ?)", [m.name, column, description])
