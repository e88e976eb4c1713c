"""``keel warehouse`` (the DuckDB warehouse, for analysts) and ``keel report`` (reports for people)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from api.cli.common import console, fail, settings

app = typer.Typer(no_args_is_help=True, help="The DuckDB warehouse, for analysts.")
report_app = typer.Typer(no_args_is_help=True, help="Reports for people.")


def _warehouse_path() -> Path:
    return settings().resolved_warehouse_path


@app.command("sql")
def warehouse_sql(
    query: Annotated[str, typer.Argument(help="A SQL query over the staging views and marts.")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file (required for parquet).")] = None,
) -> None:
    """Query the warehouse (read-only)."""
    import duckdb

    from warehouse import queries

    if fmt not in {"table", "csv", "json", "parquet"}:
        raise fail(f"unknown format {fmt!r}: use table, csv, json or parquet", 2)
    if fmt == "parquet" and out is None:
        raise fail("--format parquet needs --out FILE", 2)
    try:
        frame = queries.sql(_warehouse_path(), query)
    except queries.WarehouseMissing as exc:
        raise fail(str(exc)) from None
    except duckdb.Error as exc:
        raise fail(f"the query failed: {str(exc).splitlines()[0]}") from None
    if fmt == "parquet":
        assert out is not None
        frame.write_parquet(out)
        console.print(f"[green]{frame.height} rows written to {out}[/]")
        return
    if fmt == "table":
        from rich.table import Table

        table = Table(*frame.columns)
        for row in frame.iter_rows():
            table.add_row(*("" if v is None else str(v) for v in row))
        Console(file=out.open("w") if out else sys.stdout, width=200).print(table)
        console.print(f"{frame.height} rows")
        return
    text = frame.write_csv() if fmt == "csv" else json.dumps(frame.to_dicts(), default=str, indent=2)
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command("describe")
def warehouse_describe() -> None:
    """Tables (and keel_params, the build's as-of date), their grain, and their columns with descriptions."""
    from rich.table import Table

    from warehouse import queries

    try:
        frame = queries.describe(_warehouse_path())
    except queries.WarehouseMissing as exc:
        raise fail(str(exc)) from None
    out = Console(width=160)
    for (name, kind, grain, key), columns in frame.group_by(
        ["table_name", "kind", "grain", "key"], maintain_order=True
    ):
        table = Table(
            "column",
            "type",
            "description",
            title=f"{name} ({kind}) — {grain}" + (f"; key: {key}" if key else ""),
            title_justify="left",
        )
        for row in columns.iter_rows(named=True):
            table.add_row(row["column_name"], row["data_type"], row["description"])
        out.print(table)


@report_app.command("org-health")
def report_org_health(
    out: Annotated[Path, typer.Option(help="Where to write the report.")],
    fmt: Annotated[str, typer.Option("--format", help="html, csv or json.")] = "html",
) -> None:
    """Write the org health report (HTML with charts, CSV or JSON) from the warehouse."""
    from warehouse import queries, report

    if fmt not in {"html", "csv", "json"}:
        raise fail(f"unknown format {fmt!r}: use html, csv or json", 2)
    try:
        report.write_report(_warehouse_path(), out, fmt)
    except queries.WarehouseMissing as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror}") from None
    console.print(f"[green]report written to {out}[/]")
