"""``keel users``: users and their tokens."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from api.auth.models import PlatformRole
from api.cli.common import database_url, fail, settings
from api.errors import KeelError

app = typer.Typer(no_args_is_help=True, help="Users and their tokens.")


@app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The user's email address.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    platform_role: Annotated[PlatformRole | None, typer.Option(help="Staff role: admin or support.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"user_id": ..., "token": ...}.')] = False,
) -> None:
    """Create a user and print their id and a new token (shown once)."""
    from api.db.engine import run_in_session
    from api.users import create_user_with_token

    url = database_url(settings())
    try:
        created = run_in_session(
            url,
            lambda s: create_user_with_token(s, email=email, name=name, platform_role=platform_role),
        )
    except KeelError as exc:
        raise fail(exc.detail) from None
    if as_json:
        sys.stdout.write(json.dumps({"user_id": str(created.user_id), "token": created.token}) + "\n")
    else:
        sys.stdout.write(f"user_id: {created.user_id}\ntoken:   {created.token}\n")
