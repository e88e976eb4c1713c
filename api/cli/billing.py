"""``keel billing`` (sync the Stripe mirror, reconcile it) and ``keel stripe-mock``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from api.cli.common import console, database_url, fail, settings

app = typer.Typer(no_args_is_help=True, help="Billing: sync the Stripe mirror, reconcile it.")
stripe_mock_app = typer.Typer(no_args_is_help=True, help="A local Stripe-compatible server (tests, demo).")


@app.command("sync")
def billing_sync(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Mirror every Stripe subscription (all pages, through the official SDK); idempotent."""
    from api.billing.services import run_sync
    from api.billing.stripe_api import StripeUnavailable

    config = settings()
    url = database_url(config)
    with console.status("reading Stripe…") as status:
        try:
            result = run_sync(
                config, url, progress=lambda what, n: status.update(f"reading Stripe: {n} {what}…")
            )
        except StripeUnavailable as exc:
            raise fail(f"billing sync failed, nothing was written: {exc}") from None
    summary = result.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    console.print(
        f"[green]synced:[/] {result.subscriptions} subscriptions of {result.customers} customers —"
        f" {result.created} created, {result.updated} updated, {result.unchanged} unchanged,"
        f" {result.stale} older than the mirror; {result.linked} customers linked,"
        f" {len(result.unlinked_customers)} unlinked, {len(result.errors)} unreadable"
    )
    for error in result.errors:
        console.print(f"[yellow]unreadable {error['object']} {error['id']}:[/] {error['error']}")


def _print_reconciliation(view: Any) -> None:
    from rich.table import Table

    out = Console(width=200)
    if view.latest_failure is not None:
        failure = view.latest_failure
        console.print(f"[bold red]the latest run failed[/] ({failure.started_at:%Y-%m-%d %H:%M:%S}):"
                      f" {failure.errors[0]['error'] if failure.errors else 'unknown error'}")  # fmt: skip
    if view.run is None:
        console.print("no reconciliation has completed yet: run `keel billing reconcile`")
        return
    run = view.run
    table = Table(
        "kind", "severity", "organization", "customer", "subscription", "expected (Stripe)", "actual",
        "repaired", title=f"reconciliation {run.id} at {run.started_at:%Y-%m-%d %H:%M:%S} UTC",
        title_justify="left",
    )  # fmt: skip
    for d in view.discrepancies:
        table.add_row(
            d.kind.value, d.severity.value, str(d.organization_id or ""), d.stripe_customer_id or "",
            d.stripe_subscription_id or "", d.expected or "", d.actual or "", "yes" if d.repaired else "",
        )  # fmt: skip
    out.print(table)
    kinds = ", ".join(f"{k} {n}" for k, n in view.by_kind.items()) or "none"
    console.print(
        f"{run.discrepancy_count} discrepancies ({kinds}); {run.repaired_count} repaired;"
        f" Stripe {run.stripe_subscriptions} subscriptions, mirror {run.mirror_subscriptions};"
        f" usage from {run.usage_source}; {len(run.errors)} unreadable Stripe objects"
    )
    for error in run.errors:
        console.print(f"[yellow]unreadable {error.get('object')} {error.get('id')}:[/] {error.get('error')}")


@app.command("reconcile")
def billing_reconcile(
    repair: Annotated[bool, typer.Option(help="Bring the mirror in line with Stripe (audited).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON on stdout.")] = False,
) -> None:
    """Compare Stripe (live), the mirror and product use; record and print every discrepancy."""
    from api.billing.services import latest_reconciliation, run_reconciliation
    from api.billing.stripe_api import StripeUnavailable

    config = settings()
    url = database_url(config)
    with console.status("reading Stripe…") as status:
        try:
            run_reconciliation(
                config, url, repair=repair,
                progress=lambda what, n: status.update(f"reading Stripe: {n} {what}…"),
            )  # fmt: skip
        except StripeUnavailable as exc:
            raise fail(f"reconciliation failed, nothing was changed: {exc}") from None
    from api.db.engine import run_in_session

    view = run_in_session(url, latest_reconciliation)
    if as_json:
        import msgspec

        sys.stdout.write(msgspec.json.encode(view).decode() + "\n")
    _print_reconciliation(view)


@app.command("report")
def billing_report() -> None:
    """Print the latest reconciliation run (no call to Stripe)."""
    from api.billing.services import latest_reconciliation
    from api.db.engine import run_in_session

    _print_reconciliation(run_in_session(database_url(settings()), latest_reconciliation))


@stripe_mock_app.command("serve")
def stripe_mock_serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one).")] = 0,
    api_key: Annotated[
        str | None, typer.Option(help="The secret key clients must send (default: the server's test key).")
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Seed subscriptions for the demo's organizations in the database.")
    ] = False,
) -> None:
    """Serve the local Stripe-compatible API until interrupted (point KEEL_STRIPE_API_BASE at it)."""
    import time

    from api.stripe_local import DEFAULT_API_KEY, LocalStripe, StripeStore

    server = LocalStripe(StripeStore(seed=1), api_key=api_key or DEFAULT_API_KEY, host=host, port=port)
    if demo:
        from api.db.engine import run_in_session
        from api.stripe_local.demo import demo_orgs
        from api.stripe_local.seed import seed_demo

        orgs = run_in_session(database_url(settings()), demo_orgs)
        seed_demo(server.store, orgs)
    server.start()
    console.print(
        f"[green]Stripe-compatible server at {server.url}[/] — export KEEL_STRIPE_API_BASE={server.url}"
        f" KEEL_STRIPE_API_KEY={server.api_key}; Ctrl-C stops"
    )
    try:
        while server.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
