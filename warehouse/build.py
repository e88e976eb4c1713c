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
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from warehouse.models import Model, load_models

#: Sources that may not exist yet in a lake (written by later parts), with their empty shape.
OPTIONAL_SOURCES = {
    "subscriptions": "organization_id VARCHAR, status VARCHAR, seats BIGINT, plan VARCHAR, "
    "unit_amount BIGINT, currency VARCHAR, current_period_end TIMESTAMPTZ, cancel_at_period_end BOOLEAN, "
    "synced_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, filename VARCHAR",
    "billing_discrepancies": "id VARCHAR, run_id VARCHAR, detected_at TIMESTAMPTZ, kind VARCHAR, "
    "severity VARCHAR, organization_id VARCHAR, stripe_customer_id VARCHAR, stripe_subscription_id VARCHAR, "
    "expected VARCHAR, actual VARCHAR, detail VARCHAR, repaired BOOLEAN, filename VARCHAR",
}


class WarehouseError(RuntimeError):
    """The warehouse cannot be built from this lake."""


@dataclass
class BuildResult:
    path: Path
    as_of: date
    tables: dict[str, int]
    seconds: float


def _filesystem(lake_url: str) -> tuple[pafs.FileSystem, str, bool]:
    if lake_url.startswith("s3://"):
        from urllib.parse import urlparse

        parsed = urlparse(lake_url)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {}
        if endpoint:
            e = urlparse(endpoint)
            options = {"endpoint_override": e.netloc, "scheme": e.scheme or "https"}
        return pafs.S3FileSystem(**options), f"{parsed.netloc}{parsed.path}".rstrip("/"), True
    return pafs.LocalFileSystem(), str(Path(lake_url).resolve()), False


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


def _source_relations(con: duckdb.DuckDBPyConnection, lake_url: str, names: set[str]) -> dict[str, str]:
    """The relation each ``{source}`` placeholder reads: Parquet files of the lake, or an empty shape."""
    filesystem, root, remote = _filesystem(lake_url)
    relations = {}
    for name in sorted(names):
        files = _files(filesystem, root, name)
        if not files:
            schema_file = f"{root}/_schema/{name}.parquet"
            if filesystem.get_file_info(schema_file).is_file:
                files = [schema_file]
        if files and not remote:
            listing = ", ".join(_quote(f) for f in files)
            relations[name] = f"read_parquet([{listing}], filename = true, union_by_name = true)"
        elif files:
            # DuckDB cannot reach object storage here without its httpfs extension: materialize
            # through pyarrow's S3 filesystem instead (same rows, read once per build).
            dataset = ds.dataset(files, filesystem=filesystem, format="parquet")
            table = dataset.to_table()
            import pyarrow as pa

            table = table.append_column("filename", pa.array(["s3"] * table.num_rows, pa.string()))
            con.register(f"_arrow_{name}", table)
            con.execute(f"CREATE TABLE raw_{name} AS SELECT * FROM _arrow_{name}")
            con.unregister(f"_arrow_{name}")
            relations[name] = f"raw_{name}"
        elif name in OPTIONAL_SOURCES:
            con.execute(f"CREATE TABLE raw_{name} ({OPTIONAL_SOURCES[name]})")
            relations[name] = f"raw_{name}"
        else:
            raise WarehouseError(
                f"the lake at {lake_url} has no {name!r} data yet: run the export-lake flow first"
            )
    return relations


def build_warehouse(
    lake_url: str,
    warehouse_path: Path,
    *,
    as_of: date | None = None,
    on_model: Callable[[Model], None] | None = None,
) -> BuildResult:
    """Build every model into a fresh file, check the marts' keys, and replace ``warehouse_path``."""
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
            con.execute(
                "CREATE TABLE keel_params AS SELECT CAST(? AS DATE) AS as_of, now() AS built_at", [as_of]
            )
            relations = _source_relations(con, lake_url, set().union(*(m.sources for m in models)))
            for model in models:
                sql = model.sql.format(**relations)
                kind = "VIEW" if model.kind == "staging" else "TABLE"
                con.execute(f"CREATE {kind} {model.name} AS {sql}")
                if model.kind == "mart":
                    check_keys(con, model)
                    tables[model.name] = con.execute(f"SELECT count(*) FROM {model.name}").fetchone()[0]  # type: ignore[index]
                if on_model:
                    on_model(model)
            write_catalog(con, models)
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
