"""What every flow needs from its environment: settings, the database URL, the lake."""

from __future__ import annotations

from api.db.embedded import start_embedded_postgres
from api.settings import Settings, load_settings
from pipelines.lake import Lake


def settings() -> Settings:
    return load_settings()


def database_url(config: Settings) -> str:
    if config.database_url:
        return config.database_url
    url, _server = start_embedded_postgres(config.data_dir, cleanup=None)
    return url


def lake(config: Settings) -> Lake:
    return Lake.open(config.resolved_lake_url, s3_endpoint=config.lake_s3_endpoint)
