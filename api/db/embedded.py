"""The embedded Postgres (the ``pgserver`` wheel) used when ``KEEL_DATABASE_URL`` is not set."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

DATABASE_NAME = "keel"


def start_embedded_postgres(data_dir: Path, *, cleanup: str | None = None) -> tuple[str, Any]:
    """Start (or join) the Postgres whose data lives in ``data_dir/postgres``; return its URL.

    It listens on a Unix socket only, so it never takes a TCP port. With ``cleanup=None`` the
    server keeps running after this process ends, and the next start joins it.
    """
    warnings.filterwarnings("ignore", module="platformdirs")
    import pgserver  # imported lazily: it starts nothing at import, but pulls in psutil

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pgdata = (data_dir / "postgres").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=cleanup)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return server.get_uri(DATABASE_NAME), server
