"""Two database roles: the API connects as one that cannot undo its own audit log.

The session's live server, worker and flows already connect as the application role (conftest's
``database_url``); these tests try, as that role, every way the audit log's guarantee used to be
switched off, and check the role setup `keel db upgrade` does and the refusal to run privileged.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from api.db.base import APP_DEFAULT_PRIVILEGES
from api.db.embedded import app_url
from api.db.engine import libpq_url
from api.db.roles import PrivilegedRoleError, app_grants
from api.models import metadata
from api.settings import Settings
from pipelines import runtime
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import OrgWorld, audit_rows, free_port
from tests.test_audit_verify import tamper, verify
from tests.test_cli import KEEL, keel

AUDIT_TABLES = ("audit_log", "audit_checkpoints", "audit_chain_heads")


def refused(url: str, *statements: str, **params: object) -> str:
    """Run ``statements`` in one transaction as ``url``'s role; the error Postgres answers."""
    with psycopg.connect(libpq_url(url)) as conn, pytest.raises(psycopg.Error) as caught, conn.transaction():
        for statement in statements:
            conn.execute(statement, params or None)
    return str(caught.value)


def head_seq(engine: Engine, chain_key: str) -> int:
    """The chain's recorded head (its last seq)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT seq FROM audit_chain_heads WHERE chain_key = :k"), {"k": chain_key}
            ).scalar_one()
        )


def test_the_application_role_cannot_undo_the_audit_log(
    client: httpx.Client, engine: Engine, org: OrgWorld, database_url: str, tmp_path: Path
) -> None:
    k = org.id
    before = audit_rows(engine, organization_id=k)
    assert before and verify(client, org)["ok"]
    # Switching the triggers off: session_replication_role is the superuser's, ALTER the owner's.
    assert "permission denied" in refused(database_url, "SET session_replication_role = replica")
    for table in AUDIT_TABLES:
        assert "must be owner" in refused(database_url, f"ALTER TABLE {table} DISABLE TRIGGER USER")
        assert "must be owner" in refused(database_url, f"ALTER TABLE {table} DISABLE TRIGGER ALL")
    # Changing or removing entries, checkpoints or heads directly.
    for table in AUDIT_TABLES:
        for statement in (
            f"UPDATE {table} SET chain_key = chain_key WHERE chain_key = %(k)s",
            f"DELETE FROM {table} WHERE chain_key = %(k)s",
            f"TRUNCATE {table}",
        ):
            assert f"permission denied for table {table}" in refused(database_url, statement, k=k)
    # The old trick: a checkpoint by hand, the function's setting by hand, then DELETE.
    assert "permission denied for table audit_checkpoints" in refused(
        database_url,
        "SELECT set_config('keel.audit_prune', %(k)s, true)",
        "INSERT INTO audit_checkpoints (chain_key, seq, entry_id, hash, removed)"
        " SELECT chain_key, seq, id, hash, seq FROM audit_log WHERE chain_key = %(k)s ORDER BY seq DESC LIMIT 1",
        k=k,
    )
    assert "permission denied for table audit_log" in refused(
        database_url,
        "SELECT set_config('keel.audit_prune', %(k)s, true)",
        "DELETE FROM audit_log WHERE chain_key = %(k)s",
        k=k,
    )
    # Nor can it forge the prune function's mark, loosen the retention, or shadow Keel's objects.
    assert "permission denied" in refused(
        database_url, "INSERT INTO audit_prune_marks VALUES (txid_current(), %(k)s, 1000000)", k=k
    )
    assert "permission denied" in refused(database_url, "UPDATE keel_settings SET audit_retention_days = 1")
    assert "permission denied for schema public" in refused(
        database_url,
        "CREATE FUNCTION keel_audit_prune_limit(text) RETURNS bigint LANGUAGE sql AS 'SELECT 1e9::bigint'",
    )
    # Pruning young entries: refused even once the lake holds them.
    lake = Lake.open(str(tmp_path / "lake"))
    export_tasks.export_table(database_url, lake, export_tasks.AUDIT_LOG)
    young = refused(database_url, "SELECT keel_audit_prune(%(k)s, %(s)s)", k=k, s=head_seq(engine, k))
    assert "pruning through seq" in young and "KEEL_AUDIT_RETENTION_DAYS" in young and "365 days" in young

    assert audit_rows(engine, organization_id=k) == before
    assert verify(client, org)["ok"] is True
    cli = keel("audit", "verify", "--org", k, "--json", database_url=database_url, tmp_path=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert '"first_broken": null' in cli.stdout


def test_pruning_takes_only_entries_past_the_retention_that_the_lake_holds(
    client: httpx.Client, engine: Engine, org: OrgWorld, database_url: str, tmp_path: Path
) -> None:
    from pipelines.tasks.retention import prune_audit_log

    k = org.id
    # Entries written 400 days ago (recorded_at is not hashed; the owner moves it, triggers off).
    tamper(
        engine,
        "UPDATE audit_log SET recorded_at = recorded_at - interval '400 days' WHERE chain_key = :k",
        k=k,
    )
    count = len(audit_rows(engine, organization_id=k))
    lake = Lake.open(str(tmp_path / "lake"))
    # The lake holds none of them yet (an export to this empty lake records watermark 0 first):
    # nothing goes, and the owner's function refuses a direct call too.
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        export_tasks.record_progress(conn, export_tasks.AUDIT_LOG.name, 0)
    unexported = refused(database_url, "SELECT keel_audit_prune(%(k)s, %(s)s)", k=k, s=head_seq(engine, k))
    assert "the lake holds them (export watermark 0)" in unexported
    assert prune_audit_log(database_url, lake, retention_days=365, chain_keys={k}).removed == 0
    # Once exported, the retention flow's task (as the application role) prunes them all.
    export_tasks.export_table(database_url, lake, export_tasks.AUDIT_LOG)
    pruned = prune_audit_log(database_url, lake, retention_days=365, chain_keys={k})
    assert pruned.removed == count and pruned.checkpoints == {k: count}
    report = verify(client, org)
    assert report["ok"] is True and report["entries_checked"] == 0
    # New entries are young: a flow asking for a one-day retention still cannot take them.
    client.patch(f"/v1/orgs/{k}", json={"name": "After pruning"}, headers=org.headers("owner"))
    export_tasks.export_table(database_url, lake, export_tasks.AUDIT_LOG)
    assert prune_audit_log(database_url, lake, retention_days=1, chain_keys={k}).removed == 0
    assert verify(client, org)["ok"] is True


@pytest.fixture
def owner_and_app(fresh_database: str, admin_database_url: str) -> Iterator[tuple[str, str, str]]:
    """A fresh database owned by a role that is not a superuser (as a managed Postgres gives it),
    and the URL of an application role that does not exist yet: (owner URL, app URL, app role)."""
    suffix = uuid.uuid4().hex[:8]
    owner, app = f"keel_owner_{suffix}", f"keel_app_{suffix}"
    database = make_url(fresh_database).database
    with psycopg.connect(libpq_url(fresh_database), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE PASSWORD 'owner-secret'")
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO {owner}')
    base = make_url(fresh_database)
    owner_url = base.set(username=owner, password="owner-secret").render_as_string(hide_password=False)
    app_url_ = base.set(username=app, password="app-secret-ü").render_as_string(hide_password=False)
    yield owner_url, app_url_, app
    with psycopg.connect(libpq_url(admin_database_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')  # before its owner
        conn.execute(f"DROP ROLE IF EXISTS {app}")
        conn.execute(f"DROP ROLE IF EXISTS {owner}")


def privileges(conn: psycopg.Connection, role: str) -> dict[str, set[str]]:
    rows = conn.execute(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = %s AND table_schema = 'public'",
        (role,),
    ).fetchall()
    granted: dict[str, set[str]] = {}
    for table, privilege in rows:
        granted.setdefault(table, set()).add(privilege)
    return granted


def test_db_upgrade_with_both_urls_creates_the_app_role_and_grants_it_exactly_its_needs(
    owner_and_app: tuple[str, str, str], fresh_database: str, tmp_path: Path
) -> None:
    owner_url, app_db_url, app = owner_and_app
    first = keel("db", "upgrade", database_url=app_db_url, admin_database_url=owner_url, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"created the application role '{app}'" in first.stderr
    expected = {table: set(privs) for table, privs in app_grants(metadata) if privs}
    with psycopg.connect(libpq_url(fresh_database), autocommit=True) as admin:
        role = admin.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolpassword FROM pg_authid WHERE rolname = %s",
            (app,),
        ).fetchone()
        assert role is not None and role[:3] == (False, False, False)
        assert role[3].startswith("SCRAM-SHA-256$")  # the URL's password, sent hashed
        assert privileges(admin, app) == expected
        assert expected["audit_log"] == {"SELECT", "INSERT"}
        assert expected["audit_checkpoints"] == expected["audit_chain_heads"] == {"SELECT"}
        assert "audit_prune_marks" not in expected and "alembic_version" not in expected
        assert expected["users"] == set(APP_DEFAULT_PRIVILEGES)
        owners = admin.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        ).fetchall()
        assert owners == [(make_url(owner_url).username,)]
        # Something grants it more, and takes a privilege away: the next upgrade puts it right.
        admin.execute(f"GRANT TRUNCATE, UPDATE, DELETE ON audit_log TO {app}")
        admin.execute(f"REVOKE SELECT ON organizations FROM {app}")
    again = keel("db", "upgrade", database_url=app_db_url, admin_database_url=owner_url, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "created the application role" not in again.stderr
    with psycopg.connect(libpq_url(fresh_database), autocommit=True) as admin:
        assert privileges(admin, app) == expected
    # The application works as that role, end to end: the worker, a user, the audit chain.
    worker = keel("worker", "--until-idle", database_url=app_db_url, tmp_path=tmp_path)
    assert worker.returncode == 0 and "worker stopped" in worker.stderr, worker.stderr
    created = keel("users", "create", "--email", f"roles-{uuid.uuid4().hex[:6]}@test.example",
                   database_url=app_db_url, tmp_path=tmp_path)  # fmt: skip
    assert created.returncode == 0, created.stderr
    verified = keel("audit", "verify", database_url=app_db_url, tmp_path=tmp_path)
    assert verified.returncode == 0 and "ok:" in verified.stderr, verified.stderr
    # Neither the owner nor a superuser may run the worker.
    as_owner = keel("worker", "--until-idle", database_url=owner_url, tmp_path=tmp_path)
    assert as_owner.returncode == 1 and "owns Keel's tables" in as_owner.stderr


def start_serve(database_url: str, tmp_path: Path, **extra: str) -> tuple[subprocess.Popen[str], str]:
    import os

    port = free_port()
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_DATA_DIR": str(tmp_path),
        "KEEL_PORT": str(port),
    }
    env.update({f"KEEL_{k.upper()}": v for k, v in extra.items()})
    proc = subprocess.Popen([KEEL, "serve"], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def test_keel_serve_refuses_to_start_as_a_superuser_or_the_owner(
    admin_database_url: str, owner_and_app: tuple[str, str, str], tmp_path: Path
) -> None:
    owner_url, app_db_url, _ = owner_and_app
    assert (
        keel(
            "db", "upgrade", database_url=app_db_url, admin_database_url=owner_url, tmp_path=tmp_path
        ).returncode
        == 0
    )
    for url, why in ((admin_database_url, "is a superuser"), (owner_url, "owns Keel's tables")):
        proc, _ = start_serve(url, tmp_path)
        _, stderr = proc.communicate(timeout=60)
        message = " ".join(stderr.split())
        assert proc.returncode == 1, stderr
        assert "keel serve refuses to start" in message and why in message
        assert "KEEL_DATABASE_URL" in message and "KEEL_ADMIN_DATABASE_URL" in message
        assert "KEEL_ALLOW_PRIVILEGED_DATABASE_ROLE=true" in message and "Traceback" not in stderr
    # The documented override lets it start.
    proc, base = start_serve(admin_database_url, tmp_path, allow_privileged_database_role="true")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_worker_and_the_flows_refuse_a_superuser(
    admin_database_url: str, database_url: str, tmp_path: Path
) -> None:
    worker = keel("worker", "--until-idle", database_url=admin_database_url, tmp_path=tmp_path)
    assert worker.returncode == 1 and "keel worker refuses to start" in " ".join(worker.stderr.split())
    with pytest.raises(
        PrivilegedRoleError, match="a Keel flow refuses to start: the database role 'postgres' is a superuser"
    ):
        runtime.database_url(Settings(database_url=admin_database_url))
    assert runtime.database_url(
        Settings(database_url=admin_database_url, allow_privileged_database_role=True)
    )
    assert runtime.database_url(Settings(database_url=database_url)) == database_url
    assert app_url(admin_database_url) == database_url


def test_a_deployment_from_before_the_two_roles_is_taken_over_by_the_owner(
    fresh_database: str, admin_database_url: str, tmp_path: Path
) -> None:
    """One URL, as before: the application's role migrated and owns everything. `keel db upgrade`
    still works so (and says what to do), `keel worker` refuses; with the owner's URL added, the
    upgrade takes the tables over and the same role runs as a plain application role."""
    legacy = f"keel_legacy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(fresh_database), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {legacy} LOGIN")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {legacy}")
    legacy_url = make_url(fresh_database).set(username=legacy).render_as_string(hide_password=False)
    try:
        alone = keel("db", "upgrade", database_url=legacy_url, tmp_path=tmp_path)
        assert alone.returncode == 0, alone.stderr
        assert "connects as the owner" in " ".join(alone.stderr.split())
        refused_worker = keel("worker", "--until-idle", database_url=legacy_url, tmp_path=tmp_path)
        assert refused_worker.returncode == 1 and "owns Keel's tables" in refused_worker.stderr
        both = keel(
            "db", "upgrade", database_url=legacy_url, admin_database_url=fresh_database, tmp_path=tmp_path
        )
        assert both.returncode == 0, both.stderr
        with psycopg.connect(libpq_url(fresh_database)) as conn:
            owned = conn.execute(
                "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", (legacy,)
            ).fetchone()
            creates = conn.execute(
                "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (legacy,)
            ).fetchone()
        assert owned == (0,) and creates == (False,)
        worker = keel("worker", "--until-idle", database_url=legacy_url, tmp_path=tmp_path)
        assert worker.returncode == 0 and "worker stopped" in worker.stderr, worker.stderr
    finally:
        with psycopg.connect(libpq_url(admin_database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{make_url(fresh_database).database}" WITH (FORCE)')
            conn.execute(f"DROP ROLE IF EXISTS {legacy}")
