"""Alembic, configured in code (the top level holds no ``alembic.ini``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config

from api.db.engine import sqlalchemy_url

if TYPE_CHECKING:
    from api.db.roles import RolesResult

MIGRATIONS = Path(__file__).with_name("migrations")


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Partitions of ``events`` and ``event_keys`` are made at run time, not by migrations: leave
    them out of diffs."""
    return not (type_ == "table" and name is not None and name.startswith(("events_p", "event_keys_p")))


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def upgrade_with_roles(admin_url: str, app_url: str, *, audit_retention_days: int) -> RolesResult:
    """What ``keel db upgrade`` does: the migrations as the owner, then the application role and
    its grants (api/db/roles.py)."""
    from api.db.base import Base
    from api.db.roles import apply_roles

    upgrade(admin_url)
    # Alembic's env.py (run in this process by the upgrade) registered every table on the metadata.
    return apply_roles(admin_url, app_url, audit_retention_days=audit_retention_days, metadata=Base.metadata)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
