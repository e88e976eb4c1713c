"""The embedded Postgres (the ``pgserver`` wheel) used when ``KEEL_DATABASE_URL`` is not set."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

DATABASE_NAME = "keel"
#: The application role of the embedded Postgres. The owner of the schema is the server's own
#: superuser (``postgres``); both connect over the server's Unix socket, which trusts local
#: connections (pgserver's setup), so neither has a password.
APP_ROLE = "keel_app"


def start_embedded_postgres(data_dir: Path, *, cleanup: str | None = None) -> tuple[str, Any]:
    """Start (or join) the Postgres whose data lives in ``data_dir/postgres``; return the owner's
    (superuser's) URL. The application role exists too (:data:`APP_ROLE`, see :func:`app_url`);
    ``keel db upgrade`` gives it its grants.

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
    role = server.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}';")
    if "(1 row)" not in role:
        server.psql(f"CREATE ROLE {APP_ROLE} LOGIN;")
    return server.get_uri(DATABASE_NAME), server


def app_url(owner_url: str) -> str:
    """The embedded server's URL for the application role (same socket, same database)."""
    from sqlalchemy.engine import make_url

    return make_url(owner_url).set(username=APP_ROLE, password=None).render_as_string(hide_password=False)
