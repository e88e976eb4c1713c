"""``keel flags``: feature flags."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated

import typer

from api.cli.common import database_url, fail, settings
from api.errors import KeelError

app = typer.Typer(no_args_is_help=True, help="Feature flags.")


@app.command("explain")
def flags_explain(
    key: Annotated[str, typer.Argument(help="The flag's key.")],
    org: Annotated[uuid.UUID, typer.Option("--org", help="The organization's id.")],
    user: Annotated[
        str | None, typer.Option("--user", help="The end user's id (for user stickiness).")
    ] = None,
    context: Annotated[
        list[str] | None,
        typer.Option("--context", help="A client context field for rules, NAME=VALUE (repeatable)."),
    ] = None,
) -> None:
    """Say whether a flag is on for an organization (and user), and why, read from the database."""
    from api.db.engine import run_in_session
    from api.flags.services import explain

    fields: dict[str, str] = {}
    for item in context or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"--context takes NAME=VALUE, not {item!r}")
        fields[name] = value
    url = database_url(settings())
    try:
        flag, organization, result = run_in_session(
            url, lambda s: explain(s, key=key, org_id=org, user_id=user, context=fields)
        )
    except KeelError as exc:
        raise fail(exc.detail) from None
    state = "archived" if flag.archived_at else ("enabled" if flag.enabled else "disabled (kill switch)")
    rollout = f"rollout {flag.rollout_percentage}%, sticky by {flag.stickiness.value}"
    sys.stdout.write(
        f"flag:   {flag.key} ({state}; {rollout})\n"
        f"org:    {organization.id} ({organization.name})\n"
        + (f"user:   {user}\n" if user else "")
        + f"result: {'ON' if result.enabled else 'OFF'} ({result.reason.value})\n"
        f"why:    {result.explain()}\n"
    )
