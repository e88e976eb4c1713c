"""``keel console``: the staff console's sign-in links."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from api.cli.common import database_url, fail, settings
from api.errors import KeelError

app = typer.Typer(no_args_is_help=True, help="The staff console at /console.")


@app.command("login")
def console_login(
    email: Annotated[str, typer.Option(help="A platform staff member's email (admin or support).")],
    base_url: Annotated[
        str | None, typer.Option(help="Where the console is served (default: http://KEEL_HOST:KEEL_PORT).")
    ] = None,
) -> None:
    """Print a one-time sign-in link for the console (usable once, for KEEL_CONSOLE_LINK_TTL seconds)."""
    from api.console.sessions import create_link
    from api.db.engine import run_in_session

    config = settings()
    url = database_url(config)

    async def work(session: AsyncSession) -> tuple[str, str, str]:
        secret, user = await create_link(session, email=email, settings=config)
        return secret, user.email, user.platform_role.value if user.platform_role else ""

    try:
        secret, staff_email, role = run_in_session(url, work)
    except KeelError as exc:
        raise fail(exc.detail) from None
    base = (base_url or f"http://{config.host}:{config.port}").rstrip("/")
    sys.stdout.write(f"{base}/console/login/{secret}\n")
    sys.stderr.write(
        f"one-time sign-in link for {staff_email} ({role}); "
        f"it expires in {config.console_link_ttl // 60} minutes\n"
    )
