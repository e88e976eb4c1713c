"""Running the API under uvicorn (graceful shutdown: in-flight requests finish)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import uvicorn

from api.observability import configure_logging
from api.settings import Settings, load_settings

if TYPE_CHECKING:
    from litestar import Litestar

GRACEFUL_SHUTDOWN_SECONDS = 30


def from_env() -> Litestar:
    """uvicorn factory for worker processes: settings come from the environment."""
    from api.app import create_app

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def serve_api(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve; refuses (:class:`api.db.roles.PrivilegedRoleError`) to connect as a privileged role."""
    from api.db.roles import refuse_privileged_role

    configure_logging(settings.log_level)
    assert settings.database_url
    refuse_privileged_role(
        settings.database_url, allow=settings.allow_privileged_database_role, what="keel serve"
    )
    if workers > 1:
        os.environ["KEEL_DATABASE_URL"] = settings.database_url
        # The supervising process only watches its workers (each imports the app itself): it
        # becomes a fresh interpreter that loads uvicorn and this module, not the CLI that got us
        # here (~35 MB less). Same process id, so signals and process managers see no change.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(
            sys.executable,
            [
                sys.executable,
                "-m",
                "api.server",
                "--host",
                host,
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
        )
    from api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def supervise(argv: list[str]) -> None:
    """``python -m api.server --host H --port P --workers N``: uvicorn's supervisor over N workers."""
    parser = argparse.ArgumentParser(prog="python -m api.server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging(load_settings().log_level)
    uvicorn.run(
        "api.server:from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
        log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )  # fmt: skip


if __name__ == "__main__":
    supervise(sys.argv[1:])
