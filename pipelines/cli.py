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


def _prepare_prefect(verbose: bool = False) -> None:
    """Prefect keeps its state under the data directory; with no server configured it runs one
    temporarily in the background (ephemeral mode), on a port it picks itself."""
    from api.settings import load_settings

    home = Path(os.environ.setdefault("PREFECT_HOME", str(load_settings().data_dir.resolve() / "prefect")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server needs longer than Prefect's 20 s default on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Prefect's own logs (with tracebacks) only on request; the command prints its own summary.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")


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
def list_flows() -> None:
    """The flows and their schedules, from flows.yaml."""
    table = Table("flow", "schedule (UTC)", "parameters", "what it does")
    for d in load_deployments():
        schedules = ", ".join(s.get("cron", "") for s in d.get("schedules") or []) or "on demand"
        table.add_row(d["name"], schedules, json.dumps(d.get("parameters") or {}), d.get("description", ""))
    Console().print(table)


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
def serve_flows() -> None:
    """Run flows.yaml's schedules locally (Prefect's serve; no Prefect server to install)."""
    _prepare_prefect()
    from prefect import serve

    from pipelines import flows

    deployments = []
    for d in load_deployments():
        flow = flows.FLOWS[d["name"]]
        crons = [s["cron"] for s in d.get("schedules") or [] if "cron" in s]
        deployments.append(
            flow.to_deployment(
                name=d["name"], cron=crons[0] if crons else None, parameters=d.get("parameters") or {}
            )
        )
    console.print(f"serving {len(deployments)} flows on their schedules; Ctrl-C stops")
    serve(*deployments)  # type: ignore[arg-type]  # to_deployment is sync outside an event loop
