"""``keel``: the one console script."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from api.audit.schemas import ExportFormat
from api.auth.models import PlatformRole
from api.errors import KeelError
from api.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Keel: the organization-level spine.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
users_app = typer.Typer(no_args_is_help=True, help="Users and their tokens.")
demo_app = typer.Typer(no_args_is_help=True, help="Demo data.")
flags_app = typer.Typer(no_args_is_help=True, help="Feature flags.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit log: verify its hash chains, export it.")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(demo_app, name="demo")
app.add_typer(flags_app, name="flags")
app.add_typer(audit_app, name="audit")

console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc), 2) from None


def database_url(config: Settings, *, keep_running: bool = True) -> str:
    """The application's connection: ``KEEL_DATABASE_URL``, or the embedded Postgres under the data
    directory (started if needed) as its application role."""
    if config.database_url:
        return config.database_url
    from api.db.embedded import app_url

    return app_url(_embedded(config, keep_running))


def admin_database_url(config: Settings, *, keep_running: bool = True) -> str:
    """The owner's connection: ``KEEL_ADMIN_DATABASE_URL``, else the embedded server's superuser when
    Keel runs embedded, else ``KEEL_DATABASE_URL`` (one role for both, as before the two roles)."""
    if config.admin_database_url:
        return config.admin_database_url
    if config.database_url:
        return config.database_url
    return _embedded(config, keep_running)


def _embedded(config: Settings, keep_running: bool) -> str:
    from api.db.embedded import start_embedded_postgres

    with console.status("starting the embedded Postgres…"):
        url, _server = start_embedded_postgres(config.data_dir, cleanup=None if keep_running else "stop")
    return url


def migrate(config: Settings, revision: str = "head", *, keep_running: bool = True) -> str:
    """Migrations as the owner, then the application role and its grants; returns the app's URL."""
    from api.db.migrate import upgrade, upgrade_with_roles

    admin_url = admin_database_url(config, keep_running=keep_running)
    app_url = database_url(config, keep_running=keep_running)
    if revision != "head":
        upgrade(admin_url, revision)  # an older schema: its grants are the next upgrade's business
    else:
        roles = upgrade_with_roles(admin_url, app_url, audit_retention_days=config.audit_retention_days)
        if roles.created:
            console.print(f"created the application role {roles.app_role!r}")
        if not roles.granted:
            console.print(
                f"[yellow]the application connects as the owner ({roles.app_role!r}):[/] set"
                " KEEL_ADMIN_DATABASE_URL to the owner's connection and KEEL_DATABASE_URL to an"
                " application role (`keel serve` refuses to run as the owner)"
            )
    return app_url


def run_in_session(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one committed transaction."""
    from api.db.engine import make_async_engine, make_sessionmaker

    async def main() -> T:
        engine = make_async_engine(url, pool_size=2)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations as the owner (KEEL_ADMIN_DATABASE_URL), then create the application role
    of KEEL_DATABASE_URL if missing and grant it exactly what it needs (on every run)."""
    migrate(settings(), revision)
    console.print(f"[green]database at revision {revision}[/]")


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The user's email address.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    platform_role: Annotated[PlatformRole | None, typer.Option(help="Staff role: admin or support.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"user_id": ..., "token": ...}.')] = False,
) -> None:
    """Create a user and print their id and a new token (shown once)."""
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


@demo_app.command("seed")
def demo_seed(
    force: Annotated[
        bool, typer.Option(help="Seed even when the database already has organizations.")
    ] = False,
) -> None:
    """Seed demo organizations, members, keys and sixty days of their activity (migrates first)."""
    from api.demo import seed

    url = migrate(settings())
    with console.status("seeding the demo…"):
        summary = seed(url, force=force)
    console.print(summary)
    if not summary.seeded:
        console.print("(--force seeds it anyway)")


@flags_app.command("explain")
def flags_explain(
    key: Annotated[str, typer.Argument(help="The flag's key.")],
    org: Annotated[uuid.UUID, typer.Option("--org", help="The organization's id.")],
    user: Annotated[
        str | None, typer.Option("--user", help="The end user's id (for user stickiness).")
    ] = None,
) -> None:
    """Say whether a flag is on for an organization (and user), and why, read from the database."""
    from api.flags.services import explain

    url = database_url(settings())
    try:
        flag, organization, result = run_in_session(
            url, lambda s: explain(s, key=key, org_id=org, user_id=user)
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


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )  # fmt: skip


TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"]


@audit_app.command("verify")
def audit_verify(
    org: Annotated[str | None, typer.Option(help="One organization's chain (default: every chain).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Walk the audit hash chain(s) end to end; exit 1 if any is broken."""
    from api.audit.services import chain_key_of
    from api.audit.verify import verify
    from api.db.engine import make_async_engine, make_sessionmaker
    from api.orgs.models import Organization

    org_id = _org_id(org) if org else None
    url = database_url(settings())
    with _progress() as progress:
        task = progress.add_task("verifying", total=None)

        async def main() -> Any:
            engine = make_async_engine(url, pool_size=1)
            try:
                if org_id is not None:
                    async with make_sessionmaker(engine)() as session:
                        if await session.get(Organization, org_id) is None:
                            raise fail(f"organization {org_id} not found")
                return await verify(
                    engine,
                    chain_key=chain_key_of(org_id) if org_id else None,
                    progress=lambda n: progress.advance(task, n),
                    on_total=lambda total: progress.update(task, total=total),
                )
            finally:
                await engine.dispose()

        report = asyncio.run(main())
    summary = report.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    broken = summary["first_broken"]
    if broken is None:
        checked, chains = summary["entries_checked"], summary["chains_checked"]
        console.print(f"[green]ok:[/] {checked} entries in {chains} chain(s) verified")
        return
    console.print(
        f"[bold red]broken:[/] chain {broken['chain_key']}, entry {broken['id']} (seq {broken['seq']}): "
        f"{broken['reason']} — {summary['entries_checked']} entries checked, "
        f"{len(summary['broken_chains'])} chain(s) broken"
    )
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    org: Annotated[str, typer.Option(help="The organization whose audit log to export.")],
    out: Annotated[Path, typer.Option(help="The file to write.", dir_okay=False, writable=True)],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl or csv.")] = ExportFormat.jsonl,
    since: Annotated[
        datetime | None,
        typer.Option(help="Entries that occurred at or after (UTC if no offset).", formats=TIME_FORMATS),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(help="Entries that occurred before (UTC if no offset).", formats=TIME_FORMATS),
    ] = None,
) -> None:
    """Export one organization's audit log with each entry's hashes (to re-verify offline: docs/audit.md)."""
    from api.audit.export import export_chunks, export_filter
    from api.audit.rows import count_rows, snapshot
    from api.audit.services import chain_key_of, record
    from api.auth.context import Actor
    from api.db.engine import make_async_engine, make_sessionmaker
    from api.orgs.models import Organization

    org_id = _org_id(org)
    since, until = (_utc(v) for v in (since, until))
    url = database_url(settings())

    async def main() -> int:
        engine = make_async_engine(url, pool_size=2)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                if await session.get(Organization, org_id) is None:
                    raise fail(f"organization {org_id} not found")
                # An export through the CLI bypasses the API's roles; the org's own log says it happened.
                await record(
                    session, action="audit_log.exported", actor=Actor.system("keel-cli"), ctx=None,
                    organization_id=org_id, resource_type="audit_log", resource_id=org_id,
                    metadata={"format": fmt.value, "since": _iso(since), "until": _iso(until)},
                )  # fmt: skip
            written = 0
            with _progress() as progress, out.open("wb") as sink:
                async with snapshot(engine) as conn:
                    where, params = export_filter(chain_key_of(org_id), since, until)
                    total = await count_rows(conn, where, params)
                    task = progress.add_task(f"exporting to {out}", total=total)
                    async for piece, entries in export_chunks(
                        conn,
                        chain_key=chain_key_of(org_id),
                        fmt=fmt,
                        since=since,
                        until=until,
                    ):
                        sink.write(piece)
                        written += entries
                        progress.advance(task, entries)
            return written
        finally:
            await engine.dispose()

    written = asyncio.run(main())
    console.print(f"[green]exported {written} entries to {out}[/] (check them offline: docs/audit.md)")


def _org_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise fail(f"--org must be an organization id (a UUID), not {value!r}", 2) from None


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default KEEL_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default KEEL_PORT or 8000).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve the API."""
    from api.db.roles import PrivilegedRoleError
    from api.server import serve_api

    config = settings()
    config = config.with_(database_url=database_url(config))
    try:
        serve_api(config, host=host or config.host, port=port or config.port, workers=workers)
    except PrivilegedRoleError as exc:
        raise fail(str(exc)) from None


billing_app = typer.Typer(no_args_is_help=True, help="Billing: sync the Stripe mirror, reconcile it.")
stripe_mock_app = typer.Typer(no_args_is_help=True, help="A local Stripe-compatible server (tests, demo).")
app.add_typer(billing_app, name="billing")
app.add_typer(stripe_mock_app, name="stripe-mock")


@app.command("worker")
def worker(
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.", min=1)] = 256,
    batch: Annotated[int, typer.Option(help="Deliveries claimed per statement.", min=1)] = 128,
    per_endpoint: Annotated[
        int, typer.Option(help="Requests in flight to one endpoint at once.", min=1)
    ] = 32,
    timeout: Annotated[float, typer.Option(help="Seconds a 2xx may take, all told.", min=0.1)] = 15.0,
    lease_seconds: Annotated[
        float, typer.Option(help="Seconds a claim is held; must outlast the timeout.", min=0.2)
    ] = 60.0,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once nothing is due (instead of running on).")
    ] = False,
) -> None:
    """Deliver webhooks: claim due deliveries, send them signed, record every attempt, retry."""
    from api.observability import configure_logging
    from api.webhooks.worker import WorkerConfig, run_worker

    config = settings()
    configure_logging(config.log_level)
    try:
        worker_config = WorkerConfig(
            concurrency=concurrency,
            batch_size=batch,
            per_endpoint=per_endpoint,
            request_timeout=timeout,
            lease_seconds=lease_seconds,
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    import psycopg

    from api.db.roles import PrivilegedRoleError, refuse_privileged_role
    from api.models import metadata

    url = database_url(config)
    try:
        refuse_privileged_role(
            url, allow=config.allow_privileged_database_role, what="keel worker", metadata=metadata
        )
        stats = run_worker(config.with_(database_url=url), worker_config, until_idle=until_idle)
    except PrivilegedRoleError as exc:
        raise fail(str(exc)) from None
    except psycopg.OperationalError as exc:
        raise fail(f"cannot reach the database: {str(exc).strip().splitlines()[0]}") from None
    console.print(
        f"[green]worker stopped:[/] {stats.attempts} attempts, {stats.succeeded} succeeded, "
        f"{stats.failed} failed, {stats.reaped} reclaimed, {stats.disabled} endpoints disabled"
    )


@app.command("dev")
def dev(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """What `make run` starts: Postgres, migrations, the demo when empty, then the API."""


@billing_app.command("sync")
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


@billing_app.command("reconcile")
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
    view = run_in_session(url, latest_reconciliation)
    if as_json:
        import msgspec

        sys.stdout.write(msgspec.json.encode(view).decode() + "\n")
    _print_reconciliation(view)


@billing_app.command("report")
def billing_report() -> None:
    """Print the latest reconciliation run (no call to Stripe)."""
    from api.billing.services import latest_reconciliation

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


warehouse_app = typer.Typer(no_args_is_help=True, help="The DuckDB warehouse, for analysts.")
report_app = typer.Typer(no_args_is_help=True, help="Reports for people.")
app.add_typer(warehouse_app, name="warehouse")
app.add_typer(report_app, name="report")


def _warehouse_path() -> Path:
    return settings().resolved_warehouse_path


@warehouse_app.command("sql")
def warehouse_sql(
    query: Annotated[str, typer.Argument(help="A SQL query over the staging views and marts.")],
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file (required for parquet).")] = None,
) -> None:
    """Query the warehouse (read-only)."""
    import duckdb

    from warehouse import queries

    if fmt not in {"table", "csv", "json", "parquet"}:
        raise fail(f"unknown format {fmt!r}: use table, csv, json or parquet", 2)
    if fmt == "parquet" and out is None:
        raise fail("--format parquet needs --out FILE", 2)
    try:
        frame = queries.sql(_warehouse_path(), query)
    except queries.WarehouseMissing as exc:
        raise fail(str(exc)) from None
    except duckdb.Error as exc:
        raise fail(f"the query failed: {str(exc).splitlines()[0]}") from None
    if fmt == "parquet":
        assert out is not None
        frame.write_parquet(out)
        console.print(f"[green]{frame.height} rows written to {out}[/]")
        return
    if fmt == "table":
        from rich.table import Table

        table = Table(*frame.columns)
        for row in frame.iter_rows():
            table.add_row(*("" if v is None else str(v) for v in row))
        Console(file=out.open("w") if out else sys.stdout, width=200).print(table)
        console.print(f"{frame.height} rows")
        return
    text = frame.write_csv() if fmt == "csv" else json.dumps(frame.to_dicts(), default=str, indent=2)
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@warehouse_app.command("describe")
def warehouse_describe() -> None:
    """Tables (and keel_params, the build's as-of date), their grain, and their columns with descriptions."""
    from rich.table import Table

    from warehouse import queries

    try:
        frame = queries.describe(_warehouse_path())
    except queries.WarehouseMissing as exc:
        raise fail(str(exc)) from None
    out = Console(width=160)
    for (name, kind, grain, key), columns in frame.group_by(
        ["table_name", "kind", "grain", "key"], maintain_order=True
    ):
        table = Table(
            "column",
            "type",
            "description",
            title=f"{name} ({kind}) — {grain}" + (f"; key: {key}" if key else ""),
            title_justify="left",
        )
        for row in columns.iter_rows(named=True):
            table.add_row(row["column_name"], row["data_type"], row["description"])
        out.print(table)


@report_app.command("org-health")
def report_org_health(
    out: Annotated[Path, typer.Option(help="Where to write the report.")],
    fmt: Annotated[str, typer.Option("--format", help="html, csv or json.")] = "html",
) -> None:
    """Write the org health report (HTML with charts, CSV or JSON) from the warehouse."""
    from warehouse import queries, report

    if fmt not in {"html", "csv", "json"}:
        raise fail(f"unknown format {fmt!r}: use html, csv or json", 2)
    try:
        report.write_report(_warehouse_path(), out, fmt)
    except queries.WarehouseMissing as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror}") from None
    console.print(f"[green]report written to {out}[/]")


def _register_plugins() -> None:
    """Sub-commands from packages `api` must not import directly (``keel.cli`` entry points)."""
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
