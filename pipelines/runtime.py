"""What every flow needs from its environment, as one object: the settings, the database URL, the
lake. In-process callers (``keel dev``, the tests) hand their settings to the flows with
:func:`use`; a flow run Prefect starts in a process of its own reads them from ``KEEL_*`` once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from api.db.embedded import app_url, start_embedded_postgres
from api.db.roles import refuse_privileged_role
from api.models import metadata
from api.settings import Settings, load_settings
from pipelines.lake import Lake


@dataclass(frozen=True)
class Runtime:
    settings: Settings

    @property
    def database_url(self) -> str:
        return database_url(self.settings)

    @property
    def lake(self) -> Lake:
        return Lake.open(self.settings.resolved_lake_url, s3_endpoint=self.settings.lake_s3_endpoint)


_given: Runtime | None = None


def current() -> Runtime:
    """The runtime handed in by :func:`use`, else one from the environment (read on each call)."""
    return _given if _given is not None else Runtime(load_settings())


@contextlib.contextmanager
def use(settings: Settings) -> Iterator[Runtime]:
    """Flows run in this process while the block runs see ``settings`` (not ``os.environ``)."""
    global _given
    previous, _given = _given, Runtime(settings)
    try:
        yield _given
    finally:
        _given = previous


def database_url(config: Settings) -> str:
    """The application's connection (the embedded server's application role when unset); a flow
    refuses to run connected as a superuser or as the owner of Keel's tables."""
    url = config.database_url or app_url(start_embedded_postgres(config.data_dir, cleanup=None)[0])
    _refuse_privileged(url, config.allow_privileged_database_role)
    return url


@cache
def _refuse_privileged(url: str, allow: bool) -> None:
    refuse_privileged_role(url, allow=allow, what="a Keel flow", metadata=metadata)
