"""``keel db``: the database schema."""

from __future__ import annotations

import typer

from api.cli.common import console, migrate, settings

app = typer.Typer(no_args_is_help=True, help="Database schema.")


@app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations as the owner (KEEL_ADMIN_DATABASE_URL), then create the application role
    of KEEL_DATABASE_URL if missing and grant it exactly what it needs (on every run)."""
    migrate(settings(), revision)
    console.print(f"[green]database at revision {revision}[/]")
