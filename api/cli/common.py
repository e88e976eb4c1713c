"""What every ``keel`` command group shares: the console, failing with a message, the settings,
and the database connections (embedded Postgres when none is configured)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console

from api.settings import Settings, SettingsError, load_settings

console = Console(stderr=True)

#: What ``--since``/``--until`` accept.
TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"]


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None


def database_url(config: Settings, *, keep_running: bool = True) -> str:
    """The application's connection: ``KEEL_DATABASE_URL``, or the embedded Postgres under the data
    directory (started if needed) as its application role."""
    if config.database_url:
        return config.database_url
    from api.db.embedded import app_url

    return app_url(_embedded(config, keep_running))


def admin_database_url(config: Settings, *, keep_running: bool = True) -> str:
    """The owner's connection: ``KEEL_ADMIN_DATABASE_URL``, else the embedded server's superuser when
    Keel runs embedded, else ``KEEL_DATABASE_URL`` (one role for both, as before the two roles)."""
    if config.admin_database_url:
        return config.admin_database_url
    if config.database_url:
        return config.database_url
    return _embedded(config, keep_running)


def _embedded(config: Settings, keep_running: bool) -> str:
    from api.db.embedded import start_embedded_postgres

    with console.status("starting the embedded Postgres…"):
        url, _server = start_embedded_postgres(config.data_dir, cleanup=None if keep_running else "stop")
    return url


def migrate(config: Settings, revision: str = "head", *, keep_running: bool = True) -> str:
    """Migrations as the owner, then the application role and its grants; returns the app's URL."""
    from api.db.migrate import upgrade, upgrade_with_roles

    admin_url = admin_database_url(config, keep_running=keep_running)
    app_url = database_url(config, keep_running=keep_running)
    if revision != "head":
        upgrade(admin_url, revision)  # an older schema: its grants are the next upgrade's business
    else:
        roles = upgrade_with_roles(admin_url, app_url, audit_retention_days=config.audit_retention_days)
        if roles.created:
            console.print(f"created the application role {roles.app_role!r}")
        if not roles.granted:
            console.print(
                f"[yellow]the application connects as the owner ({roles.app_role!r}):[/] set"
                " KEEL_ADMIN_DATABASE_URL to the owner's connection and KEEL_DATABASE_URL to an"
                " application role (`keel serve` refuses to run as the owner)"
            )
    return app_url


def progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )  # fmt: skip


def org_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise fail(f"--org must be an organization id (a UUID), not {value!r}", 2) from None


def utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
