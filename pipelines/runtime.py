"""What every flow needs from its environment: settings, the database URL, the lake."""

from __future__ import annotations

from functools import cache

from api.db.embedded import app_url, start_embedded_postgres
from api.db.roles import refuse_privileged_role
from api.models import metadata
from api.settings import Settings, load_settings
from pipelines.lake import Lake


def settings() -> Settings:
    return load_settings()


def database_url(config: Settings) -> str:
    """The application's connection (the embedded server's application role when unset); a flow
    refuses to run connected as a superuser or as the owner of Keel's tables."""
    url = config.database_url or app_url(start_embedded_postgres(config.data_dir, cleanup=None)[0])
    _refuse_privileged(url, config.allow_privileged_database_role)
    return url


@cache
def _refuse_privileged(url: str, allow: bool) -> None:
    refuse_privileged_role(url, allow=allow, what="a Keel flow", metadata=metadata)


def lake(config: Settings) -> Lake:
    return Lake.open(config.resolved_lake_url, s3_endpoint=config.lake_s3_endpoint)
