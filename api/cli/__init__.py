"""``keel``: the one console script. Each command group is a module of this package; the groups
that need ``pipelines`` (which ``api`` never imports) are contributed through ``keel.cli`` entry
points (pyproject.toml). Every group and command is registered here, once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from api.cli import audit, billing, console, db, demo, flags, serve, users, warehouse

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Keel: the organization-level spine.")

#: ``keel <group> …``, in the order ``keel --help`` lists them.
GROUPS: dict[str, typer.Typer] = {
    "db": db.app,
    "users": users.app,
    "demo": demo.app,
    "flags": flags.app,
    "audit": audit.app,
    "billing": billing.app,
    "stripe-mock": billing.stripe_mock_app,
    "warehouse": warehouse.app,
    "report": warehouse.report_app,
    "console": console.app,
}
#: ``keel <command>``.
COMMANDS: dict[str, Callable[..., Any]] = {"serve": serve.serve, "worker": serve.worker}

for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)


def _register_plugins() -> None:
    """Groups and commands from packages `api` must not import (``keel.cli`` entry points)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="keel.cli"):
        plugin = entry.load()
        if isinstance(plugin, typer.Typer):
            app.add_typer(plugin, name=entry.name)
        else:
            app.command(entry.name)(plugin)


def main() -> None:
    _register_plugins()
    app()
