"""The embedded Postgres is sized for the machine (docs/operations.md), once, when its data is new;
as root, the servers started at once on a new machine all run as one system user."""

from __future__ import annotations

import multiprocessing
import os
import pwd
import subprocess
import uuid

import pytest
from sqlalchemy import Engine, text

from api.db.embedded import MB, machine_settings, system_user

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


def _first_start(
    name: str, barrier: multiprocessing.synchronize.Barrier, uids: multiprocessing.Queue
) -> None:
    barrier.wait()
    uids.put(system_user(name).pw_uid)


def test_servers_starting_at_once_on_a_new_machine_share_one_system_user() -> None:
    """The suite's workers each start a Postgres on a machine that has no pgserver user yet: each
    must find the one user that owns its data directory (unguarded, two ``useradd`` left one
    worker's directory owned by a uid that named nobody, and its whole share of the suite erred)."""
    name = f"keel-t{uuid.uuid4().hex[:8]}"
    if os.geteuid() != 0:  # Postgres runs as whoever started it: no user is made
        assert system_user(name) is None
        return
    context = multiprocessing.get_context("spawn")
    barrier, uids = context.Barrier(6), context.Queue()
    starts = [context.Process(target=_first_start, args=(name, barrier, uids)) for _ in range(6)]
    try:
        for start in starts:
            start.start()
        for start in starts:
            start.join(60)
        seen = {uids.get(timeout=5) for _ in starts}
        assert seen == {pwd.getpwnam(name).pw_uid}
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
