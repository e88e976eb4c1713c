"""``keel dev`` (what ``make run`` starts): everything on embedded defaults, then the API and the
webhook worker."""

from __future__ import annotations

import os
import subprocess
import sys

from rich.console import Console
from rich.panel import Panel

from api.settings import Settings


def run_dev(settings: Settings, *, host: str | None, port: int | None, console: Console) -> None:
    from api.cli import database_url, run_in_session
    from api.db.migrate import upgrade
    from api.demo import seed_async
    from api.server import serve_api
    from api.users import create_user_with_token

    url = database_url(settings, keep_running=False)
    with console.status("applying migrations…"):
        upgrade(url)
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
    host, port = host or settings.host, port or settings.port
    base = f"http://{host}:{port}"
    console.print(
        Panel.fit(
            f"API          {base}\n"
            f"OpenAPI      {base}/schema/openapi.json\n"
            f"Docs UI      {base}/schema\n"
            f"Admin token  {token}\n\n"
            f"try: curl -H 'Authorization: Bearer {token}' {base}/v1/admin/orgs",
            title="Keel is running",
        )
    )
    worker = _start_worker(url)
    try:
        serve_api(settings.with_(database_url=url), host=host, port=port)
    finally:
        worker.terminate()  # graceful: in-flight deliveries finish, leases are released
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


def _start_worker(database_url: str) -> subprocess.Popen[bytes]:
    """The webhook worker beside the API, as its own process (as it runs in production)."""
    env = {**os.environ, "KEEL_DATABASE_URL": database_url}
    return subprocess.Popen([sys.executable, "-c", "from api.cli import main; main()", "worker"], env=env)
