"""Alembic environment: runs migrations on a synchronous psycopg connection.

The one file under ``api/db`` that reaches the domains: Alembic loads it from the script
directory (nothing imports it as a module), and it needs every table, gathered by
:mod:`api.models`. The rest of ``api/db`` imports no domain (tests/test_layout.py).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from api.db.migrate import include_object
from api.models import metadata

config = context.config
target_metadata = metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(
            connection=connectable,
            target_metadata=target_metadata,
            compare_type=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Keel runs migrations online only: `keel db upgrade`")
run_migrations_online()
