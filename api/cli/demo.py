"""``keel demo``: demo data."""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli.common import console, migrate, settings

app = typer.Typer(no_args_is_help=True, help="Demo data.")


@app.command("seed")
def demo_seed(
    force: Annotated[
        bool, typer.Option(help="Seed even when the database already has organizations.")
    ] = False,
) -> None:
    """Seed demo organizations, members, keys and sixty days of their activity (migrates first)."""
    from api.demo import seed

    url = migrate(settings())
    with console.status("seeding the demo…"):
        summary = seed(url, force=force)
    console.print(summary)
    if not summary.seeded:
        console.print("(--force seeds it anyway)")
