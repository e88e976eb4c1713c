"""``keel dev`` (what ``make run`` starts): everything on embedded defaults, then serve."""

from __future__ import annotations

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
    serve_api(settings.with_(database_url=url), host=host, port=port)
