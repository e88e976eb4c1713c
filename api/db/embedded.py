"""The embedded Postgres (the ``pgserver`` wheel) used when ``KEEL_DATABASE_URL`` is not set."""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

DATABASE_NAME = "keel"
#: The application role of the embedded Postgres. The owner of the schema is the server's own
#: superuser (``postgres``); both connect over the server's Unix socket, which trusts local
#: connections (pgserver's setup), so neither has a password.
APP_ROLE = "keel_app"
log = logging.getLogger("keel.db")
MB = 1024 * 1024
#: Postgres refuses to run as root: as root, pgserver runs it as this system user (its own name).
SYSTEM_USER = "pgserver"


def system_user(name: str = SYSTEM_USER) -> Any:
    """As root, the passwd entry of the system user ``name`` (pgserver's), made if missing; else None.

    pgserver creates the user itself (``getpwnam``, else ``useradd``), unguarded: two processes
    starting their first server at once on a new machine (the test suite's two workers) each ran
    ``useradd``, and one's data directory ended up owned by a uid that then named nobody (initdb:
    "could not look up effective user ID"). Creating it here under a lock file first, every
    caller after the first finds it."""
    if os.geteuid() != 0:
        return None
    from pgserver import utils

    with open(Path(tempfile.gettempdir()) / "keel-pgserver-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return utils.ensure_user_exists(name)


def machine_settings(memory_bytes: int | None = None) -> dict[str, str]:
    """Postgres settings sized for this machine (what ``docs/operations.md`` asks of an external
    server too). Stock Postgres has ``shared_buffers`` 128 MB and ``max_wal_size`` 1 GB: at ingest
    rates the event key index outgrows the buffers (every claim reads and evicts a page) and a
    checkpoint every few seconds makes each first touch of a page after it write the whole 8 KB
    page into the WAL again (full-page writes).

    - ``shared_buffers``: an eighth of the memory, between 128 MB and 2 GB (the buffers are shared
      memory touched lazily, so a small database does not take them; the rest is the OS cache);
    - ``max_wal_size`` 4 GB and ``checkpoint_timeout`` 15 min: checkpoints (and the full-page
      writes after each) a few times an hour rather than every few seconds under load;
    - ``wal_compression`` stays off: the wheel's Postgres is built without lz4 (pglz only).
    """
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    buffers = max(128 * MB, min(2048 * MB, memory_bytes // 8))
    return {
        "shared_buffers": f"{buffers // MB}MB",
        "effective_cache_size": f"{max(buffers, memory_bytes // 2) // MB}MB",
        "max_wal_size": "4GB",
        "min_wal_size": "256MB",
        "checkpoint_timeout": "15min",
        "checkpoint_completion_target": "0.9",
        "maintenance_work_mem": "256MB",
    }


def restart_with(server: Any, settings: dict[str, str]) -> None:
    """Write ``settings`` with ``ALTER SYSTEM`` and restart the server through pgserver, which then
    knows the new postmaster (after a bare ``pg_ctl restart`` its cleanup finds the old one gone,
    deletes the data directory and leaves the new server running)."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # (set at its import)

    server.psql("".join(f"ALTER SYSTEM SET {name} = '{value}';" for name, value in settings.items()))
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    server.ensure_postgres_running()  # pgserver's own start (Unix socket only), reading the settings


def start_embedded_postgres(
    data_dir: Path, *, cleanup: str | None = None, sized: bool = True
) -> tuple[str, Any]:
    """Start (or join) the Postgres whose data lives in ``data_dir/postgres``; return the owner's
    (superuser's) URL. The application role exists too (:data:`APP_ROLE`, see :func:`app_url`);
    ``keel db upgrade`` gives it its grants.

    It listens on a Unix socket only, so it never takes a TCP port. With ``cleanup=None`` the
    server keeps running after this process ends, and the next start joins it. A new data
    directory gets :func:`machine_settings` (``sized=False``: stock Postgres, for comparisons).
    """
    warnings.filterwarnings("ignore", module="platformdirs")
    import pgserver  # imported lazily: it starts nothing at import, but pulls in psutil

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    pgdata = (data_dir / "postgres").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    system_user()  # before pgserver looks it up (and, without the lock, makes it)
    new = not (pgdata / "PG_VERSION").exists()
    server = pgserver.get_server(pgdata, cleanup_mode=cleanup)
    if new and sized:
        try:
            restart_with(server, machine_settings())  # only the server this call made
        except subprocess.CalledProcessError:  # the server would not restart: stock settings
            log.warning("could not size the embedded Postgres for this machine", exc_info=True)
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
