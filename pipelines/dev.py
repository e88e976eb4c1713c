"""``keel dev`` (what ``make run`` starts): everything on embedded defaults, then serve.

Registered as a ``keel.cli`` entry point: it composes api and pipelines, so it lives on the
pipelines side of the one-way import rule.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel

from api.settings import Settings


def dev(
    host: Annotated[str | None, typer.Option(help="Interface (default KEEL_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default KEEL_PORT or 8000).")] = None,
) -> None:
    """What `make run` starts: Postgres, migrations, the demo when empty, the pipelines once, the API."""
    from api.cli import console, settings

    run_dev(settings(), host=host, port=port, console=console)


def run_dev(settings: Settings, *, host: str | None, port: int | None, console: Console) -> None:
    from api.cli import migrate, run_in_session
    from api.demo import seed_async
    from api.server import serve_api
    from api.users import create_user_with_token

    with console.status("applying migrations…"):
        url = migrate(settings, keep_running=False)
    with console.status("seeding the demo (only when the database is empty)…"):
        summary = run_in_session(url, lambda s: seed_async(s))
    console.print(summary)
    token = summary.admin_token
    if token is None:
        # Tokens are shown once; a later `make run` mints a fresh admin token for this session.
        from datetime import UTC, datetime

        from api.db.models import PlatformRole

        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        created = run_in_session(
            url,
            lambda s: create_user_with_token(
                s, email=f"dev-admin-{stamp}@keel.demo", name="Dev admin", platform_role=PlatformRole.admin
            ),
        )
        token = created.token
    # Without a real Stripe key, a local Stripe-compatible server mirrors the demo orgs (with a few
    # planted discrepancies), so billing, reconciliation and the report have something to show.
    from api.billing.dev import start_demo_stripe

    settings, _stripe_server, stripe_line = start_demo_stripe(settings.with_(database_url=url), url)
    console.print(stripe_line)
    report = refresh_analytics_once(settings.with_(database_url=url), console)
    host, port = host or settings.host, port or settings.port
    base = f"http://{host}:{port}"
    console.print(
        Panel.fit(
            f"API          {base}\n"
            f"OpenAPI      {base}/schema/openapi.json\n"
            f"Docs UI      {base}/schema\n"
            f"Admin token  {token}\n"
            f"Report       {report}\n"
            f'Warehouse    keel warehouse sql "SELECT * FROM org_health"\n\n'
            f"try: curl -H 'Authorization: Bearer {token}' {base}/v1/admin/orgs",
            title="Keel is running",
        )
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so the children
    # and the embedded Postgres are stopped on the way out, as they are for Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with background_services(settings.with_(database_url=url), console):
        serve_api(settings.with_(database_url=url), host=host, port=port)


def refresh_analytics_once(settings: Settings, console: Console) -> str:
    """Export, build and report once, in-process as a real Prefect flow run; returns the report path."""
    import os

    os.environ["KEEL_DATABASE_URL"] = settings.database_url or ""
    home = os.environ.setdefault("PREFECT_HOME", str(settings.data_dir.resolve() / "prefect"))
    os.makedirs(home, exist_ok=True)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from pipelines.flows import refresh_analytics

    with console.status("running the pipelines once (export → warehouse → org health report)…"):
        result = refresh_analytics()
    return str(result["report"]["html"])


@contextlib.contextmanager
def background_services(settings: Settings, console: Console) -> Iterator[None]:
    """The processes `make run` keeps beside the API: the webhook worker (`keel worker`) and the
    flow schedules of flows.yaml (`keel flows serve`). They are stopped when the API stops (the
    worker gracefully: in-flight deliveries finish, leases are released)."""
    import os
    import subprocess
    from pathlib import Path

    keel = str(Path(sys.executable).with_name("keel"))
    env = {**os.environ, "KEEL_DATABASE_URL": settings.database_url or ""}
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children = []
    for name, args in {"webhook worker": ["worker"], "flow schedules": ["flows", "serve"]}.items():
        log = (log_dir / f"{args[0]}.log").open("ab")
        children.append(
            subprocess.Popen([keel, *args], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        )
        console.print(f"started {name} (`keel {' '.join(args)}`, log in {log_dir / (args[0] + '.log')})")
    try:
        yield
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
