"""Keel's Prefect flows. Flows orchestrate; each task is one I/O step around a plain function in
``pipelines.tasks`` (which the tests also call directly). Deployed by ``flows.yaml``."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import Flow, flow, task

from pipelines import progress, runtime
from pipelines.tasks import checkpoints as checkpoint_tasks
from pipelines.tasks import export as export_tasks
from pipelines.tasks import retention as retention_tasks


@task(name="export-incremental", retries=2, retry_delay_seconds=5)
def export_incremental(table: str, chunk_rows: int) -> dict[str, Any]:
    """The rows of an append-only or versioned table the lake does not hold yet."""
    rt = runtime.current()
    result = export_tasks.export_table(
        rt.database_url,
        rt.lake,
        export_tasks.INCREMENTAL[table],
        chunk_rows=chunk_rows,
        progress=lambda done, total: progress.report(f"export {table}", done, total),
    )
    return {"table": table, "rows": result.rows, "files": len(result.files), "watermark": result.watermark_to}


@task(name="export-snapshot", retries=2, retry_delay_seconds=5)
def export_snapshot(name: str) -> dict[str, Any]:
    rt = runtime.current()
    result = export_tasks.export_snapshot(rt.database_url, rt.lake, export_tasks.SNAPSHOTS[name])
    progress.report(f"snapshot {name}", result.rows, result.rows)
    return {"table": name, "rows": result.rows}


@task(name="write-schemas")
def write_schemas() -> None:
    export_tasks.write_schemas(runtime.current().lake)


@flow(name="export-lake", log_prints=True)
def export_lake(chunk_rows: int = 250_000) -> list[dict[str, Any]]:
    """Incremental, idempotent export of every record table to the Parquet lake."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    write_schemas()
    results = [export_incremental(name, chunk_rows) for name in export_tasks.INCREMENTAL]
    results += [export_snapshot(name) for name in export_tasks.SNAPSHOTS]
    return results


@task(name="build-duckdb")
def build_duckdb(as_of: str | None) -> dict[str, Any]:
    """``dbt build`` of the warehouse project; each model finished is logged and shown as progress."""
    from prefect.logging import get_run_logger

    from warehouse.build import build_warehouse
    from warehouse.models import load_models

    config = runtime.current().settings
    day = date.fromisoformat(as_of) if as_of else None
    logger = get_run_logger()
    total = len(load_models())
    done = 0

    def on_model(name: str) -> None:
        nonlocal done
        done += 1
        logger.info("dbt model %s built (%d/%d)", name, done, total)
        progress.report("build warehouse (dbt)", done, total)

    result = build_warehouse(
        config.resolved_lake_url,
        config.resolved_warehouse_path,
        as_of=day,
        on_model=on_model,
        s3_endpoint=config.lake_s3_endpoint,
    )
    return {"path": str(result.path), "as_of": result.as_of.isoformat(), "tables": result.tables}


@flow(name="build-warehouse", log_prints=True)
def build_warehouse_flow(as_of: str | None = None) -> dict[str, Any]:
    """Rebuild the DuckDB warehouse from the lake: ``dbt build`` (models and tests) into a new file,
    swapped in only when every test passes."""
    if as_of is not None:
        date.fromisoformat(as_of)  # a bad date fails here, before anything is written
    return build_duckdb(as_of)


@task(name="render-org-health")
def render_org_health(out_dir: str | None) -> dict[str, str]:
    from pathlib import Path

    from warehouse.report import write_report

    config = runtime.current().settings
    target = Path(out_dir) if out_dir else config.data_dir / "reports"
    target.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in ("html", "csv"):
        paths[fmt] = str(write_report(config.resolved_warehouse_path, target / f"org-health.{fmt}", fmt))
        progress.report("org health report", len(paths), 2)
    return paths


@flow(name="org-health", log_prints=True)
def org_health(out_dir: str | None = None) -> dict[str, str]:
    """Write the org health report (HTML with charts, and CSV) from the warehouse."""
    return render_org_health(out_dir)


@flow(name="refresh-analytics", log_prints=True)
def refresh_analytics(chunk_rows: int = 250_000, as_of: str | None = None) -> dict[str, Any]:
    """Export, rebuild the warehouse, write the report: what `make run` does before serving."""
    exported = export_lake(chunk_rows=chunk_rows)
    built = build_warehouse_flow(as_of=as_of)
    report = org_health()
    return {"exported": exported, "warehouse": built, "report": report}


@task(name="drop-exported-partitions")
def drop_exported_partitions(retention_days: int | None) -> dict[str, Any]:
    rt = runtime.current()
    config = rt.settings
    days = config.events_retention_days if retention_days is None else retention_days
    result = retention_tasks.prune_events(rt.database_url, rt.lake, retention_days=days)
    progress.report("retention", len(result.dropped), len(result.dropped) + len(result.kept))
    return {"dropped": result.dropped, "kept": result.kept, "keys_removed": result.keys_removed}


@task(name="prune-exported-audit-entries")
def prune_exported_audit_entries(retention_days: int | None) -> dict[str, Any]:
    rt = runtime.current()
    config = rt.settings
    days = config.audit_retention_days if retention_days is None else retention_days
    result = retention_tasks.prune_audit_log(rt.database_url, rt.lake, retention_days=days)
    progress.report("audit retention", result.chains, result.chains)
    return {"chains": result.chains, "removed": result.removed, "checkpoints": result.checkpoints}


@task(name="purge-idempotency-keys")
def purge_idempotency_keys() -> int:
    return retention_tasks.purge_idempotency_keys(runtime.current().database_url)


@task(name="purge-ingestion-warnings")
def purge_ingestion_warnings() -> int:
    return retention_tasks.purge_ingestion_warnings(runtime.current().database_url)


@flow(name="retention", log_prints=True)
def retention(
    events_retention_days: int | None = None, audit_retention_days: int | None = None
) -> dict[str, Any]:
    """Drop event partitions and audit entries past their retention, only once the lake holds them
    (audit entries through the checkpointing prune path, so every chain still verifies); forget
    audit idempotency keys past their 24 h replay window, and ingestion warnings past 30 days."""
    for name, value in (
        ("events_retention_days", events_retention_days),
        ("audit_retention_days", audit_retention_days),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1")
    return {
        "events": drop_exported_partitions(events_retention_days),
        "audit": prune_exported_audit_entries(audit_retention_days),
        "idempotency_keys_purged": purge_idempotency_keys(),
        "ingestion_warnings_purged": purge_ingestion_warnings(),
    }


class StripeUnreachable(RuntimeError):
    """Stripe could not be read; Prefect retries the task, and nothing was written."""


def _billing_retry_delay() -> float:
    return runtime.current().settings.billing_retry_delay


#: The retry delay is KEEL_BILLING_RETRY_DELAY, given when the flow calls the task.
@task(name="sync-stripe-subscriptions", retries=2)
def sync_stripe_subscriptions() -> dict[str, Any]:
    from api.billing.services import run_sync
    from api.billing.stripe_api import StripeUnavailable

    rt = runtime.current()
    config = rt.settings
    try:
        result = run_sync(
            config,
            rt.database_url,
            progress=lambda what, n: progress.report(f"read {what}", n, None),
        )
    except StripeUnavailable as exc:
        raise StripeUnreachable(str(exc)) from None
    progress.report("mirror subscriptions", result.subscriptions, result.subscriptions)
    return result.as_dict()


@flow(name="sync-billing", log_prints=True)
def sync_billing() -> dict[str, Any]:
    """Mirror every Stripe subscription into Postgres (all pages, idempotent, each change audited)."""
    delay = _billing_retry_delay()
    return sync_stripe_subscriptions.with_options(retry_delay_seconds=delay)()


#: The retry delay is KEEL_BILLING_RETRY_DELAY, given when the flow calls the task.
@task(name="reconcile-stripe-mirror-usage", retries=2)
def reconcile_stripe_mirror_usage(repair: bool, stale_after_hours: float) -> dict[str, Any]:
    from datetime import timedelta

    from api.billing.services import run_reconciliation
    from api.billing.stripe_api import StripeUnavailable

    rt = runtime.current()
    config = rt.settings
    try:
        result, stripe_seconds = run_reconciliation(
            config,
            rt.database_url,
            repair=repair,
            stale_after=timedelta(hours=stale_after_hours),
            progress=lambda what, n: progress.report(f"read {what}", n, None),
        )
    except StripeUnavailable as exc:
        raise StripeUnreachable(str(exc)) from None
    progress.report("reconcile", len(result.found), len(result.found))
    return {**result.as_dict(), "stripe_seconds": round(stripe_seconds, 3)}


@task(name="export-billing")
def export_billing() -> dict[str, Any]:
    rt = runtime.current()
    url, lake = rt.database_url, rt.lake
    export_tasks.write_schemas(lake)
    runs = export_tasks.export_snapshot(url, lake, export_tasks.SNAPSHOTS["billing_reconciliation_runs"])
    found = export_tasks.export_table(url, lake, export_tasks.BILLING_DISCREPANCIES)
    mirror = export_tasks.export_snapshot(url, lake, export_tasks.SNAPSHOTS["subscriptions"])
    return {
        "billing_discrepancies": found.rows,
        "subscriptions": mirror.rows,
        "billing_reconciliation_runs": runs.rows,
    }


@flow(name="reconcile-billing", log_prints=True)
def reconcile_billing(repair: bool = False, stale_after_hours: float = 48.0) -> dict[str, Any]:
    """Compare Stripe (live), the billing mirror and product use; record every discrepancy in
    Postgres and the lake. ``repair=true`` brings the mirror in line with Stripe (audited)."""
    if stale_after_hours <= 0:
        raise ValueError("stale_after_hours must be positive")
    delay = _billing_retry_delay()
    result = reconcile_stripe_mirror_usage.with_options(retry_delay_seconds=delay)(repair, stale_after_hours)
    return {**result, "exported": export_billing()}


@task(name="apply-due-flag-changes")
def apply_due_flag_changes() -> int:
    from api.flags.schedules import run_due_schedules

    return run_due_schedules(runtime.current().database_url)


@flow(name="flag-schedules", log_prints=True)
def apply_flag_schedules() -> int:
    """Apply the scheduled flag changes that are due (the webhook worker does too, every 20 s)."""
    applied = apply_due_flag_changes()
    print(f"applied {applied} scheduled flag changes")
    return applied


@task(name="sign-moved-chain-heads")
def sign_moved_chain_heads() -> list[dict[str, Any]]:
    rt = runtime.current()
    return checkpoint_tasks.sign_audit_checkpoints(rt.settings, rt.database_url)


@flow(name="audit-checkpoints", log_prints=True)
def sign_audit_checkpoints() -> dict[str, Any]:
    """Sign each audit chain's head that moved since its last signed checkpoint (docs/audit.md)."""
    signed = sign_moved_chain_heads()
    progress.report("signed checkpoints", len(signed), len(signed))
    return {"signed": len(signed), "chains": signed}


#: The flows `keel flows` knows, by the names flows.yaml deploys them under.
FLOWS: dict[str, Flow[..., Any]] = {
    "export-lake": export_lake,
    "build-warehouse": build_warehouse_flow,
    "org-health": org_health,
    "refresh-analytics": refresh_analytics,
    "retention": retention,
    "sync-billing": sync_billing,
    "reconcile-billing": reconcile_billing,
    "flag-schedules": apply_flag_schedules,
    "audit-checkpoints": sign_audit_checkpoints,
}
