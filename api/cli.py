"""``keel``: the one console script."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from api.db.models import PlatformRole
from api.errors import KeelError
from api.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Keel: the organization-level spine.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
users_app = typer.Typer(no_args_is_help=True, help="Users and their tokens.")
demo_app = typer.Typer(no_args_is_help=True, help="Demo data.")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(demo_app, name="demo")

console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None


def database_url(config: Settings, *, keep_running: bool = True) -> str:
    """``KEEL_DATABASE_URL``, or the embedded Postgres under the data directory (started if needed)."""
    if config.database_url:
        return config.database_url
    from api.db.embedded import start_embedded_postgres

    with console.status("starting the embedded Postgres…"):
        url, _server = start_embedded_postgres(config.data_dir, cleanup=None if keep_running else "stop")
    return url


def run_in_session(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one committed transaction."""
    from api.db.engine import make_async_engine, make_sessionmaker

    async def main() -> T:
        engine = make_async_engine(url, pool_size=2)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations (to the newest revision by default)."""
    from api.db.migrate import upgrade

    url = database_url(settings())
    upgrade(url, revision)
    console.print(f"[green]database at revision {revision}[/]")


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The user's email address.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    platform_role: Annotated[PlatformRole | None, typer.Option(help="Staff role: admin or support.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"user_id": ..., "token": ...}.')] = False,
) -> None:
    """Create a user and print their id and a new token (shown once)."""
    from api.users import create_user_with_token

    url = database_url(settings())
    try:
        created = run_in_session(
            url,
            lambda s: create_user_with_token(s, email=email, name=name, platform_role=platform_role),
        )
    except KeelError as exc:
        raise fail(exc.detail) from None
    if as_json:
        sys.stdout.write(json.dumps({"user_id": str(created.user_id), "token": created.token}) + "\n")
    else:
        sys.stdout.write(f"user_id: {created.user_id}\ntoken:   {created.token}\n")


@demo_app.command("seed")
def demo_seed(
    force: Annotated[
        bool, typer.Option(help="Seed even when the database already has organizations.")
    ] = False,
) -> None:
    """Seed demo organizations, members, keys and sixty days of their activity (migrates first)."""
    from api.db.migrate import upgrade
    from api.demo import seed

    config = settings()
    url = database_url(config)
    upgrade(url)
    with console.status("seeding the demo…"):
        summary = seed(url, force=force)
    console.print(summary)


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default KEEL_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default KEEL_PORT or 8000).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve the API."""
    from api.server import serve_api

    config = settings()
    config = config.with_(database_url=database_url(config))
    serve_api(config, host=host or config.host, port=port or config.port, workers=workers)


@app.command("worker")
def worker(
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.", min=1)] = 256,
    batch: Annotated[int, typer.Option(help="Deliveries claimed per statement.", min=1)] = 128,
    per_endpoint: Annotated[
        int, typer.Option(help="Requests in flight to one endpoint at once.", min=1)
    ] = 32,
    timeout: Annotated[float, typer.Option(help="Seconds a 2xx may take, all told.", min=0.1)] = 15.0,
    lease_seconds: Annotated[
        float, typer.Option(help="Seconds a claim is held; must outlast the timeout.", min=0.2)
    ] = 60.0,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once nothing is due (instead of running on).")
    ] = False,
) -> None:
    """Deliver webhooks: claim due deliveries, send them signed, record every attempt, retry."""
    from api.observability import configure_logging
    from api.webhooks.worker import WorkerConfig, run_worker

    config = settings()
    configure_logging(config.log_level)
    try:
        worker_config = WorkerConfig(
            concurrency=concurrency,
            batch_size=batch,
            per_endpoint=per_endpoint,
            request_timeout=timeout,
            lease_seconds=lease_seconds,
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    import psycopg

    try:
        stats = run_worker(
            config.with_(database_url=database_url(config)), worker_config, until_idle=until_idle
        )
    except psycopg.OperationalError as exc:
        raise fail(f"cannot reach the database: {str(exc).strip().splitlines()[0]}") from None
    console.print(
        f"[green]worker stopped:[/] {stats.attempts} attempts, {stats.succeeded} succeeded, "
        f"{stats.failed} failed, {stats.reaped} reclaimed, {stats.disabled} endpoints disabled"
    )


@app.command("dev")
def dev(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """What `make run` starts: Postgres, migrations, the demo when empty, then the API."""
    from api.dev import run_dev

    run_dev(settings(), host=host, port=port, console=console)


def main() -> None:
    app()
