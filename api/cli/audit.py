"""``keel audit``: verify the hash chains, export an organization's log."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from api.audit.schemas import ExportFormat
from api.cli.common import TIME_FORMATS, console, database_url, fail, org_id, progress_bar, settings, utc
from api.errors import KeelError

app = typer.Typer(no_args_is_help=True, help="The audit log: verify its hash chains, export it.")


@app.command("verify")
def audit_verify(
    org: Annotated[str | None, typer.Option(help="One organization's chain (default: every chain).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Walk the audit hash chain(s) end to end; exit 1 if any is broken."""
    from api.audit.services import chain_key_of
    from api.audit.verify import Split, verify
    from api.db.engine import make_sessionmaker, run_with_engine
    from api.orgs.models import Organization

    one = org_id(org) if org else None
    configured = settings()
    url = database_url(configured)
    with progress_bar() as progress:
        task = progress.add_task("verifying", total=None)

        async def work(engine: Any) -> Any:
            if one is not None:
                async with make_sessionmaker(engine)() as session:
                    if await session.get(Organization, one) is None:
                        raise fail(f"organization {one} not found")
            return await verify(
                engine,
                chain_key=chain_key_of(one) if one else None,
                progress=lambda n: progress.advance(task, n),
                on_total=lambda total: progress.update(task, total=total),
                split=Split.of(configured),
            )

        try:
            report = run_with_engine(url, work, pool_size=1)
        except KeelError as exc:
            raise fail(exc.detail) from None
    summary = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    broken = summary["first_broken"]
    if broken is None:
        checked, chains = summary["entries_checked"], summary["chains_checked"]
        console.print(f"[green]ok:[/] {checked} entries in {chains} chain(s) verified")
        return
    console.print(
        f"[bold red]broken:[/] chain {broken['chain_key']}, entry {broken['id']} (seq {broken['seq']}): "
        f"{broken['reason']} — {summary['entries_checked']} entries checked, "
        f"{len(summary['broken_chains'])} chain(s) broken"
    )
    raise typer.Exit(1)


@app.command("export")
def audit_export(
    org: Annotated[str, typer.Option(help="The organization whose audit log to export.")],
    out: Annotated[Path, typer.Option(help="The file to write.", dir_okay=False, writable=True)],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl or csv.")] = ExportFormat.jsonl,
    since: Annotated[
        datetime | None,
        typer.Option(help="Entries that occurred at or after (UTC if no offset).", formats=TIME_FORMATS),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(help="Entries that occurred before (UTC if no offset).", formats=TIME_FORMATS),
    ] = None,
    checkpoints: Annotated[
        bool, typer.Option("--checkpoints", help="jsonl: end with the chain's signed checkpoints.")
    ] = False,
) -> None:
    """Export one organization's audit log with each entry's hashes (to re-verify offline: docs/audit.md)."""
    from api.audit.export import export_organization
    from api.auth.context import Actor
    from api.db.engine import run_with_engine
    from api.errors import NotFound

    organization_id = org_id(org)
    since, until = (utc(v) for v in (since, until))
    url = database_url(settings())
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"exporting to {out}", total=None)
            written = run_with_engine(
                url,
                lambda engine: export_organization(
                    engine, out, organization_id=organization_id, fmt=fmt, since=since, until=until,
                    checkpoints=checkpoints,
                    # An export through the CLI bypasses the API's roles; the org's own log says it happened.
                    actor=Actor.system("keel-cli"),
                    on_total=lambda total: progress.update(task, total=total),
                    progress=lambda n: progress.advance(task, n),
                ),
            )  # fmt: skip
    except NotFound as exc:
        raise fail(exc.detail) from None
    console.print(f"[green]exported {written} entries to {out}[/] (check them offline: docs/audit.md)")
