"""Running the API under uvicorn (graceful shutdown: in-flight requests finish)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import uvicorn

from api.observability import configure_logging
from api.settings import Settings, load_settings

if TYPE_CHECKING:
    from litestar import Litestar


def from_env() -> Litestar:
    """uvicorn factory for worker processes: settings come from the environment."""
    from api.app import create_app

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def serve_api(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    # The app is imported where it serves: with several workers the supervising process only
    # watches them, and importing the app there cost as much memory as a worker.
    configure_logging(settings.log_level)
    if workers > 1:
        assert settings.database_url
        os.environ["KEEL_DATABASE_URL"] = settings.database_url
        uvicorn.run(
            "api.server:from_env", factory=True, host=host, port=port, workers=workers,
            log_config=None, access_log=False, timeout_graceful_shutdown=30,
        )  # fmt: skip
        return
    from api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
