"""``keel flows``: list, run and serve the flows of flows.yaml (registered as a `keel.cli` entry point)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

flows_app = typer.Typer(no_args_is_help=True, help="Prefect flows: list, run one now, serve the schedules.")
console = Console(stderr=True)
FLOWS_FILE = Path(__file__).resolve().parents[1] / "flows.yaml"


def _prepare_prefect(verbose: bool = False) -> Path:
    """Prefect's state under the data directory, and the Prefect API to use: ``PREFECT_API_URL``,
    else the local server ``keel dev``/``keel flows serve`` runs, else a temporary one (Prefect's
    ephemeral mode, on a port it picks itself). Returns PREFECT_HOME."""
    from api.settings import load_settings
    from pipelines.prefect_server import connect

    return connect(load_settings(), verbose=verbose)[0]


def load_deployments(path: Path = FLOWS_FILE) -> list[dict[str, Any]]:
    config = yaml.safe_load(path.read_text())
    return list(config.get("deployments", []))


def parse_params(values: list[str], flow_name: str) -> dict[str, Any]:
    """``k=v`` pairs; values are read as JSON when they parse (numbers, true/false, null), else text."""
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not k=v", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@flows_app.command("list")
def list_flows(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The flows, their schedules, and from Prefect each one's last run and next scheduled run."""
    from pipelines import schedules

    home = _prepare_prefect()
    try:
        with console.status("reading runs from Prefect…"):
            status = schedules.read_status(load_deployments(), home)
    except schedules.PrefectUnreachable as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps([row.as_json() for row in status.rows], indent=2) + "\n")
        return
    table = Table("flow", "schedule (UTC)", "last run (UTC)", "next run (UTC)", "runs")
    table.columns[0].no_wrap = True
    for row in status.rows:
        table.add_row(
            row.name, row.schedule_text(), row.last_run_text(), row.next_run_text(), row.runs_text()
        )
    Console().print(table)
    console.print(status.source)


@flows_app.command("run")
def run_flow(
    name: Annotated[str, typer.Argument(help="A flow name from `keel flows list`.")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="k=v, repeatable.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs.")] = False,
) -> None:
    """Run one flow now (a real Prefect flow run), with progress bars and a summary."""
    import inspect

    _prepare_prefect(verbose)
    from pipelines import flows, progress

    if not verbose:
        import logging

        for logger in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
            logging.getLogger(logger).setLevel(logging.CRITICAL)

    if name not in flows.FLOWS:
        console.print(f"[bold red]error:[/] no flow named {name!r}; known: {', '.join(sorted(flows.FLOWS))}")
        raise typer.Exit(2)
    flow = flows.FLOWS[name]
    params = parse_params(param or [], name)
    accepted = set(inspect.signature(flow.fn).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        console.print(
            f"[bold red]error:[/] {name} has no parameter {', '.join(unknown)};"
            f" it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
        raise typer.Exit(2)
    bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)  # fmt: skip
    tasks: dict[str, Any] = {}

    def reporter(step: str, done: int, total: int | None) -> None:
        if step not in tasks:
            tasks[step] = bars.add_task(step, total=total)
        bars.update(tasks[step], completed=done, total=total)

    progress.set_reporter(reporter)
    try:
        with bars:
            result = flow(**params)
    except Exception as exc:
        console.print(f"[bold red]flow {name} failed:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    finally:
        progress.set_reporter(None)
    console.print(f"[green]flow {name} completed[/]")
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


@flows_app.command("serve")
def serve_flows(
    schedule: Annotated[
        list[str] | None,
        typer.Option(
            "--schedule",
            help="NAME=EVERY (20s, 5m, 2h, 1d) or NAME='CRON', replacing that flow's schedule for this"
            " serve only; repeatable.",
        ),
    ] = None,
) -> None:
    """Run flows.yaml's schedules locally: a Prefect server with its scheduler (started here unless
    PREFECT_API_URL or `keel dev` provides one) and a runner that executes the scheduled runs."""
    # The serve log is where a run's start, end and error are read: Prefect's INFO logs. Set before
    # Prefect is first imported (it reads its settings then, and hands them to the runs it starts).
    os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    from api.settings import load_settings
    from pipelines import schedules
    from pipelines.prefect_server import prefect_api

    declared = load_deployments()
    try:
        overrides = schedules.parse_overrides(schedule or [], [d["name"] for d in declared])
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    settings = load_settings()
    with prefect_api(settings, log_dir=settings.data_dir / "logs") as (api_url, started):
        where = "a Prefect server started for this serve" if started else "the configured Prefect server"
        console.print(f"Prefect API {api_url} ({where})")
        schedules.serve(declared, overrides, console=console)
