"""The `keel` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import text

from api.db.embedded import app_url
from api.db.engine import make_sync_engine
from tests.harness import auth, unique
from tests.test_migrations import fullwidth

KEEL = str(Path(sys.executable).with_name("keel"))


def keel(
    *args: str, database_url: str, tmp_path: Path, admin_database_url: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``keel ARGS`` with KEEL_DATABASE_URL (and KEEL_ADMIN_DATABASE_URL, and any KEEL_* in extra)."""
    env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(tmp_path)}
    env.pop("KEEL_ADMIN_DATABASE_URL", None)
    if admin_database_url:
        env["KEEL_ADMIN_DATABASE_URL"] = admin_database_url
    env.update({f"KEEL_{name.upper()}": value for name, value in extra.items()})
    return subprocess.run([KEEL, *args], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


def test_users_create_prints_a_working_token(database_url: str, client: httpx.Client, tmp_path: Path) -> None:
    email = f"{unique('cli')}@test.example"
    result = keel("users", "create", "--email", email, "--name", "Ops", "--platform-role", "support", "--json",
                  database_url=database_url, tmp_path=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert set(created) == {"user_id", "token"}
    me = client.get("/v1/me", headers=auth(created["token"])).json()
    assert me["user_id"] == created["user_id"] and me["email"] == email and me["platform_role"] == "support"

    plain = keel(
        "users",
        "create",
        "--email",
        f"{unique('cli')}@test.example",
        database_url=database_url,
        tmp_path=tmp_path,
    )
    assert plain.returncode == 0 and "user_id:" in plain.stdout and "token:" in plain.stdout


def test_users_create_refuses_bad_input_clearly(database_url: str, tmp_path: Path) -> None:
    email = f"{unique('dup')}@test.example"
    assert (
        keel("users", "create", "--email", email, database_url=database_url, tmp_path=tmp_path).returncode
        == 0
    )
    again = keel("users", "create", "--email", email.upper(), database_url=database_url, tmp_path=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    lookalike = keel(
        "users", "create", "--email", fullwidth(email), database_url=database_url, tmp_path=tmp_path
    )
    assert lookalike.returncode == 1 and f"{email} already exists" in lookalike.stderr
    bad_email = keel("users", "create", "--email", "nope", database_url=database_url, tmp_path=tmp_path)
    assert bad_email.returncode == 1 and "invalid email" in bad_email.stderr
    bad_role = keel("users", "create", "--email", "x@y.example", "--platform-role", "root",
                    database_url=database_url, tmp_path=tmp_path)  # fmt: skip
    assert bad_role.returncode == 2 and "root" in bad_role.stderr


def test_db_upgrade_and_demo_seed_on_an_empty_database(fresh_database: str, tmp_path: Path) -> None:
    # The owner migrates; the demo is written by the application role `keel db upgrade` set up.
    app = app_url(fresh_database)
    upgraded = keel("db", "upgrade", database_url=app, admin_database_url=fresh_database, tmp_path=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    seeded = keel("demo", "seed", database_url=app, admin_database_url=fresh_database, tmp_path=tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    assert "demo seeded" in seeded.stderr
    engine = make_sync_engine(fresh_database)
    try:
        with engine.connect() as conn:
            orgs = conn.execute(text("SELECT slug FROM organizations ORDER BY slug")).scalars().all()
            owners = conn.execute(
                text("SELECT count(*) FROM memberships WHERE role = 'owner' AND status = 'active'")
            ).scalar()
    finally:
        engine.dispose()
    assert orgs == ["acme", "globex", "initech", "umbrella"]
    assert owners == 4
    again = keel("demo", "seed", database_url=app, admin_database_url=fresh_database, tmp_path=tmp_path)
    assert again.returncode == 0 and "not seeded" in again.stderr


def test_a_bad_setting_is_a_clear_error(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_PORT": "eighty"}
    result = subprocess.run(
        [KEEL, "db", "upgrade"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2 and "KEEL_PORT must be an integer" in result.stderr


def test_worker_refuses_a_lease_shorter_than_its_timeout(database_url: str, tmp_path: Path) -> None:
    result = keel(
        "worker", "--timeout", "20", "--lease-seconds", "10", database_url=database_url, tmp_path=tmp_path
    )
    assert (
        result.returncode == 2
        and "lease must be longer" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_worker_until_idle_exits_when_nothing_is_due(fresh_database: str, tmp_path: Path) -> None:
    app = app_url(fresh_database)
    upgraded = keel("db", "upgrade", database_url=app, admin_database_url=fresh_database, tmp_path=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    result = keel("worker", "--until-idle", database_url=app, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "worker stopped" in result.stderr
