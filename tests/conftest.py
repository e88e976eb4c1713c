"""Session-wide real parts: an embedded Postgres with the migrations applied, and a live API."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import Engine, text

from api.app import create_app
from api.auth.models import PlatformRole
from api.db.embedded import APP_ROLE, app_url, start_embedded_postgres
from api.db.engine import make_sync_engine
from api.db.migrate import upgrade_with_roles
from api.settings import Settings
from tests.harness import LiveServer, OrgWorld, make_org, make_user

if TYPE_CHECKING:
    from pipelines.prefect_server import LocalPrefectServer

OUTPUT_DIR = Path(os.environ.get("KEEL_TEST_OUTPUT", "test-output"))
STRIPE_SECRET = "whsec_test_keel_stripe_0123456789abcdef"
#: Retry schedule for tests that watch retries happen: seconds, not hours.
FAST_SCHEDULE = (0, 1, 2)


#: The suite's layers (markers registered in pyproject.toml). A test's layer comes from its file
#: when the file is listed here, else from its fixtures: a Prefect server, a lake or a warehouse
#: makes it `pipelines`; Postgres (directly or through the live API) `api`; nothing of those `unit`.
E2E_FILES = frozenset(
    {"test_dev_restart.py", "test_flow_schedules.py", "test_webhook_worker_process.py", "test_events_crash.py",
     "test_health_report.py", "test_docs_offline.py", "test_cli.py", "test_console.py", "test_prefect_worker.py",
     "test_browser_ingest.py", "test_browser_sdks.py"}
)  # fmt: skip
PIPELINE_FILES = frozenset(
    {"test_pipelines.py", "test_pipelines_cli.py", "test_lake_s3.py", "test_webhook_lake.py", "test_billing_reconcile.py",
     "test_audit_export.py", "test_audit_prune.py", "test_audit_stream_retention.py", "test_dbt_project.py",
     "test_spark_lake.py", "test_people_marts.py"}
)  # fmt: skip
PIPELINE_FIXTURES = frozenset({"prefect_harness", "session_prefect", "pipeline_env", "built_warehouse"})
LAYERS = ("unit", "api", "pipelines", "e2e")


def layer_of(item: pytest.Item) -> str:
    name = item.path.name
    fixtures = set(getattr(item, "fixturenames", ()))
    if name in E2E_FILES:
        return "e2e"
    if name in PIPELINE_FILES or fixtures & PIPELINE_FIXTURES:
        return "pipelines"
    if "pg_server" in fixtures:
        return "api"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets its layer's marker; the heaviest layers run first (whole programs, then the
    pipelines, then the API, then pure functions), each file's tests still together, so the
    workers (``--dist worksteal``) end on many short tests rather than one waiting on a long one."""
    layers = {item.nodeid: layer_of(item) for item in items}
    for item in items:
        item.add_marker(getattr(pytest.mark, layers[item.nodeid]))
    items.sort(key=lambda item: -LAYERS.index(layers[item.nodeid]))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    data_dir = tmp_path_factory.mktemp("pg")
    url, server = start_embedded_postgres(data_dir, cleanup="delete")
    # The suite checks behaviour, not crash-durability of Postgres itself: skip the fsyncs.
    server.psql("ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;")  # type: ignore[attr-defined]
    server.psql("SELECT pg_reload_conf();")  # type: ignore[attr-defined]
    yield url, server
    server.cleanup()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def admin_database_url(pg_server: tuple[str, object]) -> str:
    """The owner's connection (the embedded server's superuser), migrated and with the application
    role granted, as `keel db upgrade` leaves it: for test setup and inspection only."""
    url = pg_server[0]
    upgrade_with_roles(url, app_url(url), audit_retention_days=Settings().audit_retention_days)
    return url


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> str:
    """The application's connection (a role that owns nothing): the live servers, the worker and
    the flows use it, so the whole suite proves the role's grants are enough."""
    return app_url(admin_database_url)


@pytest.fixture(scope="session")
def engine(admin_database_url: str) -> Iterator[Engine]:
    """Setup and inspection, as the owner (it may tamper, as an attacker with the keys would)."""
    engine = make_sync_engine(admin_database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("keel"),
        stripe_webhook_secret=STRIPE_SECRET,
    )


@pytest.fixture(scope="session")
def app(settings: Settings):  # type: ignore[no-untyped-def]
    return create_app(settings)


@pytest.fixture(scope="session")
def live_server(app) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="session")
def hooks_settings(settings: Settings) -> Settings:
    """Settings for tests that deliver to local receivers: private targets allowed, fast retries."""
    return settings.with_(webhook_allow_private_targets=True, webhook_retry_schedule=FAST_SCHEDULE)


@pytest.fixture(scope="session")
def hooks_server(hooks_settings: Settings) -> Iterator[LiveServer]:
    """A second live API whose endpoints may point at 127.0.0.1 (the session's server refuses)."""
    with LiveServer(create_app(hooks_settings)) as server:
        yield server


@pytest.fixture
def hooks_client(hooks_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hooks_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def org(client: httpx.Client, engine: Engine) -> OrgWorld:
    """A fresh organization with one active member per role."""
    return make_org(client, engine)


@pytest.fixture
def other_org(client: httpx.Client, engine: Engine) -> OrgWorld:
    return make_org(client, engine)


@pytest.fixture
def staff_admin(engine: Engine) -> tuple[str, str]:
    return make_user(engine, platform_role=PlatformRole.admin)


@pytest.fixture
def staff_support(engine: Engine) -> tuple[str, str]:
    return make_user(engine, platform_role=PlatformRole.support)


def _create_database(base_url: str, *, template: str | None = None) -> Iterator[str]:
    """A database of its own on the session's server (a copy of ``template`` when named), dropped after."""
    import uuid

    from sqlalchemy.engine import make_url

    name = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = make_sync_engine(base_url).execution_options(isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
        if template:
            # Database-level grants are not copied with the contents (`keel db upgrade` gave this one).
            conn.execute(text(f'GRANT CONNECT ON DATABASE "{name}" TO {APP_ROLE}'))
    yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_database(pg_server: tuple[str, object]) -> Iterator[str]:
    """An empty database of its own, for tests that need a schema-less start."""
    yield from _create_database(pg_server[0])


@pytest.fixture(scope="session")
def migrated_template(pg_server: tuple[str, object]) -> str:
    """A database migrated to head with the application role's grants, as `keel db upgrade` leaves
    it, made once per session: each :func:`migrated_database` is a copy of it, which costs a file
    copy instead of every migration."""
    from sqlalchemy.engine import make_url

    base_url = pg_server[0]
    name = "keel_migrated_template"
    admin = make_sync_engine(base_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    upgrade_with_roles(url, app_url(url), audit_retention_days=Settings().audit_retention_days)
    with admin.connect() as conn:
        # A template must have no one connected while it is copied.
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
        )
    admin.dispose()
    return name


@pytest.fixture
def migrated_database(pg_server: tuple[str, object], migrated_template: str) -> Iterator[str]:
    """The owner's URL of a database of its own, migrated and granted (a copy of the template)."""
    yield from _create_database(pg_server[0], template=migrated_template)


@pytest.fixture(scope="session")
def session_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrefectServer]:
    """One real Prefect server (``prefect server start``, as ``keel flows serve`` runs it) for the
    whole session: flows run in this process and ``keel flows run`` subprocesses (given its
    ``PREFECT_API_URL``) talk to it, instead of each starting a temporary server of its own."""
    from pipelines.prefect_server import start_local_server

    home = tmp_path_factory.mktemp("prefect")
    server = start_local_server(home, home / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_harness(session_prefect: LocalPrefectServer) -> Iterator[None]:
    """Flows run in this process report to the session's Prefect server."""
    os.environ["PREFECT_HOME"] = str(session_prefect.record.parent)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: session_prefect.api_url}):
        yield


@pytest.fixture
def pipeline_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The settings flows read from the environment, with a lake and warehouse of this test's own."""
    paths = {"data": tmp_path / "data", "lake": tmp_path / "lake", "warehouse": tmp_path / "warehouse.duckdb"}
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    monkeypatch.setenv("KEEL_DATA_DIR", str(paths["data"]))
    monkeypatch.setenv("KEEL_LAKE_URL", str(paths["lake"]))
    monkeypatch.setenv("KEEL_WAREHOUSE_PATH", str(paths["warehouse"]))
    return paths


@pytest.fixture(scope="session")
def offline_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline verifier exactly as an auditor copies it out of docs/audit.md."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "audit.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/audit.md should hold exactly one python script"
    path = tmp_path_factory.mktemp("auditor") / "verify_audit_export.py"
    path.write_text(blocks[0])
    return path
