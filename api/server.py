"""Running the API under uvicorn (graceful shutdown: in-flight requests finish)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from api.observability import configure_logging
from api.protocol import ServerConfig
from api.settings import Settings, load_settings

if TYPE_CHECKING:
    from litestar import Litestar

GRACEFUL_SHUTDOWN_SECONDS = 30
#: uvicorn's exit status when the server could not start.
STARTUP_FAILURE = 3


def server_config(app: Any, settings: Settings, **options: Any) -> ServerConfig:
    """The one uvicorn configuration every API server runs with: ``keel serve`` (one process or a
    supervisor of workers), ``keel dev`` and the tests' ``LiveServer``. ``app`` is the app or, for
    workers, an import string; ``options`` are uvicorn's (host, port, workers, lifespan...).

    The httptools protocol with read deadlines (``api/protocol.py``; h11 is never chosen), no
    WebSocket upgrades (the API has no WebSocket route), Keel's own logging instead of uvicorn's
    access log, and in-flight requests finishing on shutdown."""
    return ServerConfig(
        app,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        ws="none",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **options,
    )


def from_env() -> Litestar:
    """uvicorn factory for worker processes: settings come from the environment."""
    skip_unused_imports()
    from api.app import create_app

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


#: Modules a server process never runs but would import: httpx's package imports its command-line
#: client (``httpx._main``: rich, pygments and click, ~3.6 MB resident) when those are installed;
#: httpx falls back to a stub ``main`` when the import fails, and the API uses only httpx's client.
UNUSED_IN_SERVER = ("httpx._main",)


def skip_unused_imports() -> None:
    """In a server worker, before the app is imported: make :data:`UNUSED_IN_SERVER` unimportable
    (a ``None`` entry in ``sys.modules``), unless something already imported them."""
    for name in UNUSED_IN_SERVER:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def serve_api(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve; refuses (:class:`api.db.roles.PrivilegedRoleError`) to connect as a privileged role."""
    from api.db.roles import refuse_privileged_role
    from api.models import metadata

    configure_logging(settings.log_level)
    assert settings.database_url
    refuse_privileged_role(
        settings.database_url,
        allow=settings.allow_privileged_database_role,
        what="keel serve",
        metadata=metadata,
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
    skip_unused_imports()
    from api.app import create_app

    server = uvicorn.Server(server_config(create_app(settings), settings, host=host, port=port))
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C is a normal way out
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def supervise(argv: list[str]) -> None:
    """``python -m api.server --host H --port P --workers N``: uvicorn's supervisor over N workers."""
    parser = argparse.ArgumentParser(prog="python -m api.server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level)
    config = server_config(
        "api.server:from_env", settings, factory=True, host=args.host, port=args.port, workers=args.workers
    )
    # What uvicorn.run does for workers, with Keel's configuration (uvicorn.run builds its own).
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    supervise(sys.argv[1:])
