"""``keel dev`` (what ``make run`` starts): everything on embedded defaults, then serve.

Registered as a ``keel.cli`` entry point: it composes api and pipelines, so it lives on the
pipelines side of the one-way import rule.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from api.settings import Settings


def dev(
    host: Annotated[str | None, typer.Option(help="Interface (default KEEL_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default KEEL_PORT or 8000).")] = None,
    schedule: Annotated[
        list[str] | None,
        typer.Option(
            "--schedule", help="NAME=EVERY (20s, 5m) or NAME='CRON' for this run, as `keel flows serve`."
        ),
    ] = None,
    plant_demo_stripe: Annotated[
        bool,
        typer.Option(
            "--plant-demo-stripe",
            help="With no KEEL_STRIPE_API_KEY, plant the demo's Stripe data (a local Stripe, customers"
            " linked to the demo orgs, discrepancies) even in a KEEL_DATABASE_URL database; by default"
            " only the embedded one gets it.",
        ),
    ] = False,
) -> None:
    """What `make run` starts: Postgres, migrations, the demo when empty, the pipelines once, the API,
    the webhook worker and the flow schedules."""
    from api.cli.common import console, settings
    from pipelines.cli import load_deployments
    from pipelines.schedules import parse_overrides

    try:  # checked before anything starts
        parse_overrides(schedule or [], [d["name"] for d in load_deployments()])
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    run_dev(
        settings(), host=host, port=port, console=console, schedule=schedule or [],
        plant_demo_stripe=plant_demo_stripe,
    )  # fmt: skip


def run_dev(
    settings: Settings,
    *,
    host: str | None,
    port: int | None,
    console: Console,
    schedule: list[str] | None = None,
    plant_demo_stripe: bool = False,
) -> None:
    from api.server import serve_api

    try:
        with dev_environment(
            settings, host=host, port=port, console=console, plant_demo_stripe=plant_demo_stripe
        ) as ready:
            # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so the
            # helpers and the embedded Postgres are stopped on the way out, as they are for Ctrl-C.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
            with background_services(ready.settings, console, schedule=schedule or []):
                serve_api(ready.settings, host=ready.host, port=ready.port)
    except KeyboardInterrupt:  # Ctrl-C: everything above has been stopped on the way out
        pass
    console.print("Keel stopped")


@dataclass
class DevReady:
    """What ``keel dev``'s start-up prepared, before it serves."""

    settings: Settings
    host: str
    port: int
    admin_email: str
    admin_token: str
    reconciliation: str
    report: str
    prefect_api_url: str
    receiver_url: str
    #: The secret of a one-time console sign-in link for the admin (``/console/login/<secret>``).
    console_link_secret: str = ""


@contextlib.contextmanager
def dev_environment(
    settings: Settings,
    *,
    host: str | None,
    port: int | None,
    console: Console,
    plant_demo_stripe: bool = False,
) -> Iterator[DevReady]:
    """Start-up, without serving: Postgres, migrations, the webhook receiver, the demo when the
    database is empty, the admin token, the local Stripe, a Prefect server, the pipelines once and
    a reconciliation run; prints the banner. Everything it started stops on exit. Run twice on one
    data directory, the second start changes nothing the first made (tests prove it)."""
    from api.cli.common import migrate
    from api.console.sessions import create_link
    from api.db.engine import run_in_session
    from api.demo import DemoReceiverUrls, reissue_admin_token, repoint_demo_endpoints, seed_async
    from api.stripe_local.demo import reconcile_once, start_demo_stripe
    from pipelines.dev_receiver import DemoReceiver
    from pipelines.prefect_server import prefect_api

    embedded = not settings.database_url  # KEEL_DATABASE_URL unset: the embedded Postgres
    with console.status("applying migrations…"):
        url = migrate(settings, keep_running=False)
    settings = settings.with_(database_url=url)
    with contextlib.ExitStack() as started:  # whatever started is stopped on the way out, in reverse
        receiver = DemoReceiver(settings.data_dir).start()
        started.callback(receiver.stop)
        if receiver.previous_port and receiver.previous_port != receiver.port:
            old = f"http://127.0.0.1:{receiver.previous_port}"
            moved = run_in_session(
                url, lambda s: repoint_demo_endpoints(s, old_base=old, new_base=receiver.url)
            )
            console.print(
                f"webhook receiver: port {receiver.previous_port} was taken; {moved} demo endpoints moved"
            )
        with console.status("seeding the demo (only when the database is empty)…"):
            summary = run_in_session(url, lambda s: seed_async(s, receiver=DemoReceiverUrls(receiver.url)))
        console.print(summary.headline(), soft_wrap=True)
        if summary.admin_token is not None:
            admin_email, admin_token = summary.admin_email, summary.admin_token
        else:
            # Only a token's hash is stored, so the old one cannot be shown again: the same admin
            # user gets a new one, and the one printed last time stops working.
            reissued = run_in_session(url, reissue_admin_token)
            admin_email, admin_token = reissued.email, reissued.token
            console.print(
                f"admin token re-issued for {reissued.email};"
                f" the {reissued.revoked} earlier one(s) are revoked",
                soft_wrap=True,
            )
        link_secret, _ = run_in_session(url, lambda s: create_link(s, email=admin_email, settings=settings))
        with console.status("starting the local Stripe…"):
            settings, stripe_server, stripe_line = start_demo_stripe(
                settings, url, embedded=embedded, plant_anywhere=plant_demo_stripe
            )
        if stripe_server is not None:
            started.callback(stripe_server.stop)
        console.print(stripe_line, soft_wrap=True)
        with console.status("starting a Prefect server (flow runs and their schedules)…"):
            prefect_url, _ = started.enter_context(prefect_api(settings, log_dir=settings.data_dir / "logs"))
        report = refresh_analytics_once(settings, console)
        with console.status("reconciling billing…"):
            reconciliation = reconcile_once(settings, url)
        console.print(f"Stripe: {reconciliation}", soft_wrap=True)
        ready = DevReady(
            settings=settings, host=host or settings.host, port=port or settings.port,
            admin_email=admin_email, admin_token=admin_token, reconciliation=reconciliation,
            report=report, prefect_api_url=prefect_url, receiver_url=receiver.url,
            console_link_secret=link_secret,
        )  # fmt: skip
        print_banner(ready, summary.ingest_keys(), console)
        yield ready


def print_banner(ready: DevReady, ingest_keys: dict[str, str], console: Console) -> None:
    """Plain lines, never wrapped by Rich: a token or key is copied whole from one line."""
    base = f"http://{ready.host}:{ready.port}"
    lines = [
        "[bold]Keel is running[/]",
        f"  API          {base}",
        f"  OpenAPI      {base}/schema/openapi.json",
        f"  Docs UI      {base}/schema",
        f"  Admin        {ready.admin_email}",
        f"  Admin token  {ready.admin_token}",
        f"  Console      {base}/console  (sign in once: {base}/console/login/{ready.console_link_secret})",
        *(f"  Ingest key   {slug:<10} {key}" for slug, key in ingest_keys.items()),
        *(
            []
            if ingest_keys
            else ["  Ingest keys  shown once, when the demo was seeded (new: POST /v1/orgs/{id}/ingest-keys)"]
        ),
        f"  Report       {ready.report}",
        '  Warehouse    keel warehouse sql "SELECT * FROM org_health"',
        f"  Prefect API  {ready.prefect_api_url}  (keel flows list: last and next runs)",
        f"  Webhooks     demo receiver {ready.receiver_url}",
        "",
        f"try: curl -H 'Authorization: Bearer {ready.admin_token}' {base}/v1/admin/orgs",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


def refresh_analytics_once(settings: Settings, console: Console) -> str:
    """Export, build and report once, in-process as a real Prefect flow run (which gets ``settings``
    through the pipelines' runtime); returns the report path."""
    from pipelines import runtime
    from pipelines.flows import refresh_analytics

    with (
        console.status("running the pipelines once (export → warehouse → org health report)…"),
        runtime.use(settings),
    ):
        result = refresh_analytics()
    return str(result["report"]["html"])


@contextlib.contextmanager
def background_services(settings: Settings, console: Console, *, schedule: list[str]) -> Iterator[None]:
    """The processes `make run` keeps beside the API: the webhook worker (`keel worker`) and the
    flow schedules of flows.yaml (`keel flows serve`, against the Prefect server ``keel dev``
    started). Each runs in a session of its own, so a Ctrl-C reaches only ``keel dev``, which
    stops them together when the API has stopped (the worker gracefully: in-flight deliveries
    finish, leases are released; the runner cancels runs in flight and pauses the schedules)."""
    import os
    from pathlib import Path

    from pipelines.prefect_server import child_process, stop_processes

    keel = str(Path(sys.executable).with_name("keel"))
    # Child processes read their settings from KEEL_*: what keel dev chose (the embedded database,
    # the local Stripe) is handed to them here, in their environment.
    env = {**os.environ, **child_environment(settings)}
    # The demo's endpoints are on 127.0.0.1 (the receiver above): only the worker keel dev starts
    # may deliver to private addresses; the API keeps refusing to register them.
    worker_env = {
        **env,
        "KEEL_WEBHOOK_ALLOW_PRIVATE_TARGETS": os.environ.get("KEEL_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
    }
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children = []
    serve = ["flows", "serve", *(arg for item in schedule for arg in ("--schedule", item))]
    for name, args, child_env in (("webhook worker", ["worker"], worker_env), ("flow schedules", serve, env)):
        with (log_dir / f"{args[0]}.log").open("ab") as log:
            children.append(child_process([keel, *args], env=child_env, log=log))
        console.print(
            f"started {name} (`keel {' '.join(args)}`, log in {log_dir / (args[0] + '.log')})", soft_wrap=True
        )
    try:
        yield
    finally:
        console.print("stopping the webhook worker and the flow schedules…")
        stop_processes(children)


def child_environment(settings: Settings) -> dict[str, str]:
    """The ``KEEL_*`` variables that carry what ``keel dev`` chose at start-up to its children."""
    chosen = {
        "KEEL_DATABASE_URL": settings.database_url,
        "KEEL_STRIPE_API_KEY": settings.stripe_api_key,
        "KEEL_STRIPE_API_BASE": settings.stripe_api_base,
    }
    return {name: value for name, value in chosen.items() if value}
