"""The embedded Postgres is sized for the machine (docs/operations.md), once, when its data is new."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from api.db.embedded import MB, machine_settings

pytestmark = pytest.mark.api


def test_the_buffers_are_an_eighth_of_the_memory_within_bounds() -> None:
    assert machine_settings(512 * MB)["shared_buffers"] == "128MB"  # never below stock
    assert machine_settings(8 * 1024 * MB)["shared_buffers"] == "1024MB"
    assert machine_settings(64 * 1024 * MB)["shared_buffers"] == "2048MB"
    assert machine_settings(8 * 1024 * MB)["effective_cache_size"] == "4096MB"


def test_a_new_embedded_server_runs_with_the_machine_settings(engine: Engine) -> None:
    """The session's server (tests/conftest.py) was made from a new data directory."""
    with engine.connect() as conn:
        for name, value in machine_settings().items():
            shown = conn.execute(
                text("SELECT setting, unit FROM pg_settings WHERE name = :n"), {"n": name}
            ).one()
            assert _normal(shown.setting, shown.unit) == _normal(value, None), name


def _normal(setting: str, unit: str | None) -> str:
    """A setting as pg_settings shows it (a number of units) or as written ('2048MB', '15min')."""
    units = {"8kB": 8 * 1024, "kB": 1024, "MB": MB, "s": 1, "min": 60}
    if unit in units:
        return str(int(setting) * units[unit])
    for suffix in ("GB", "MB", "min"):
        if setting.endswith(suffix) and setting[: -len(suffix)].isdigit():
            factor = {"GB": 1024 * MB, "MB": MB, "min": 60}[suffix]
            return str(int(setting[: -len(suffix)]) * factor)
    return setting
