"""``keel serve`` (the API) and ``keel worker`` (webhook deliveries)."""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli.common import console, database_url, fail, settings
from api.webhooks.config import WorkerConfig

#: The worker's defaults are WorkerConfig's own, written once there.
_WORKER = WorkerConfig()


def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default KEEL_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default KEEL_PORT or 8000).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve the API."""
    from api.db.roles import PrivilegedRoleError
    from api.server import serve_api

    config = settings()
    config = config.with_(database_url=database_url(config))
    try:
        serve_api(config, host=host or config.host, port=port or config.port, workers=workers)
    except PrivilegedRoleError as exc:
        raise fail(str(exc)) from None


def worker(
    concurrency: Annotated[
        int, typer.Option(help="Requests in flight at once.", min=1)
    ] = _WORKER.concurrency,
    batch: Annotated[int, typer.Option(help="Deliveries claimed per statement.", min=1)] = _WORKER.batch_size,
    per_endpoint: Annotated[
        int, typer.Option(help="Requests in flight to one endpoint at once.", min=1)
    ] = _WORKER.per_endpoint,
    timeout: Annotated[
        float, typer.Option(help="Seconds a 2xx may take, all told.", min=0.1)
    ] = _WORKER.request_timeout,
    lease_seconds: Annotated[
        float, typer.Option(help="Seconds a claim is held; must outlast the timeout.", min=0.2)
    ] = _WORKER.lease_seconds,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once nothing is due (instead of running on).")
    ] = False,
) -> None:
    """Deliver webhooks (claim due deliveries, send them signed, record every attempt, retry) and
    audit log streams (each in seq order, one worker at a time per stream)."""
    from api.observability import configure_logging
    from api.webhooks.worker import run_worker

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

    from api.db.roles import PrivilegedRoleError, refuse_privileged_role

    url = database_url(config)
    try:
        from api.models import metadata

        refuse_privileged_role(
            url, allow=config.allow_privileged_database_role, what="keel worker", metadata=metadata
        )
        stats = run_worker(config.with_(database_url=url), worker_config, until_idle=until_idle)
    except PrivilegedRoleError as exc:
        raise fail(str(exc)) from None
    except psycopg.OperationalError as exc:
        raise fail(f"cannot reach the database: {str(exc).strip().splitlines()[0]}") from None
    console.print(
        f"[green]worker stopped:[/] {stats.attempts} attempts, {stats.succeeded} succeeded, "
        f"{stats.failed} failed, {stats.reaped} reclaimed, {stats.disabled} endpoints disabled"
    )
