"""Reconciliation and sync against the local Stripe-compatible server, through the official SDK,
in a database of their own (reconciliation looks at every organization and mirror row)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, text

from api.billing.models import DiscrepancyKind
from api.billing.services import run_reconciliation, run_sync
from api.billing.stripe_api import PAGE_SIZE, StripeUnavailable, make_client, read_stripe
from api.db.embedded import app_url
from api.db.engine import make_sync_engine
from api.stripe_local import LocalStripe, StripeStore
from tests.billing_support import (
    add_member,
    add_usage,
    insert_org,
    mirror_row,
    plans,
    settings_for,
    subscribe,
)
from tests.harness import free_port

KEEL = str(Path(sys.executable).with_name("keel"))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def billing_db(migrated_database: str) -> Iterator[tuple[str, Engine]]:
    """A database of its own: the application role's URL, and an owner engine for setup."""
    app = app_url(migrated_database)
    engine = make_sync_engine(migrated_database)
    yield app, engine
    engine.dispose()


@pytest.fixture
def local_stripe() -> Iterator[LocalStripe]:
    with LocalStripe(StripeStore(seed=7)) as server:
        yield server


def kinds(found: list) -> Counter[str]:  # type: ignore[type-arg]
    return Counter(f.kind.value for f in found)


def test_sdk_auto_pagination_across_pages(local_stripe: LocalStripe) -> None:
    prices = plans(local_stripe)
    created = [subscribe(local_stripe, insert_org_id(i), prices, at=1_700_000_000 + i) for i in range(250)]
    client = make_client(settings_for("unused", local_stripe, Path("/tmp")))
    forward = [s.id for s in client.v1.subscriptions.list(params={"limit": 7}).auto_paging_iter()]
    newest_first = [sub for _, sub in reversed(created)]
    assert forward == newest_first  # every page, in Stripe's order, none twice
    page = client.v1.customers.list(params={"limit": 10, "starting_after": created[-1][0]})
    assert page.has_more and len(page.data) == 10
    backward = client.v1.customers.list(params={"limit": 5, "ending_before": page.data[7].id})
    assert [c.id for c in backward.data] == [c.id for c in page.data[2:7]]
    before = local_stripe.store.requests
    snapshot = read_stripe(client)
    assert len(snapshot.subscriptions) == 250 and len(snapshot.customers) == 250
    assert local_stripe.store.requests - before == 2 * -(-250 // PAGE_SIZE)  # 3 pages each
    expanded = snapshot.subscriptions[0]["items"]["data"][0]["price"]["product"]
    assert expanded["object"] == "product" and expanded["name"] == "Team"


def insert_org_id(i: int) -> object:
    import uuid

    return uuid.UUID(int=i + 1)


def test_stripe_errors_map_to_clear_failures(local_stripe: LocalStripe, tmp_path: Path) -> None:
    with httpx.Client(base_url=local_stripe.url) as raw:
        missing_key = raw.get("/v1/customers")
        assert (
            missing_key.status_code == 401 and missing_key.json()["error"]["type"] == "invalid_request_error"
        )
        headers = {"Authorization": f"Bearer {local_stripe.api_key}"}
        not_found = raw.get("/v1/customers/cus_nope", headers=headers).json()["error"]
        assert not_found["code"] == "resource_missing" and not_found["param"] == "id"
        bad_limit = raw.get("/v1/subscriptions?limit=lots", headers=headers)
        assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"
        unknown = raw.get("/v1/subscriptions?colour=red", headers=headers).json()["error"]
        assert unknown["code"] == "parameter_unknown" and unknown["param"] == "colour"
        assert raw.get("/v1/nothing-here", headers=headers).status_code == 404

    wrong_key = settings_for("unused", local_stripe, tmp_path).with_(stripe_api_key="sk_test_wrong")
    with pytest.raises(StripeUnavailable, match="refused the API key"):
        read_stripe(make_client(wrong_key, max_network_retries=0))
    local_stripe.store.faults.status, local_stripe.store.faults.count = 500, None
    with pytest.raises(StripeUnavailable, match=r"answered an error \(HTTP 500"):
        read_stripe(make_client(settings_for("unused", local_stripe, tmp_path), max_network_retries=0))
    nowhere = settings_for("unused", None, tmp_path).with_(stripe_api_base=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StripeUnavailable, match="unreachable"):
        read_stripe(make_client(nowhere, max_network_retries=0))
    with pytest.raises(StripeUnavailable, match="KEEL_STRIPE_API_KEY"):
        make_client(nowhere.with_(stripe_api_key=None))


def test_every_discrepancy_kind_is_found_exactly_once_and_a_clean_dataset_yields_none(
    billing_db: tuple[str, Engine], local_stripe: LocalStripe, tmp_path: Path
) -> None:
    url, engine = billing_db
    config = settings_for(url, local_stripe, tmp_path)
    prices = plans(local_stripe)
    org = {name: insert_org(engine, members=3) for name in (
        "fine", "gone", "status", "plan", "seats", "crowded", "unpaid", "stale", "late",
    )}  # fmt: skip
    subs = {}
    for name, org_id in org.items():
        if name == "late":
            continue
        status = "canceled" if name == "unpaid" else "active"
        subs[name] = subscribe(local_stripe, org_id, prices, seats=3, status=status)[1]

    synced = run_sync(config, url)
    assert (
        synced.created == 8 and synced.linked == 8 and synced.errors == [] and synced.unlinked_customers == []
    )
    again = run_sync(config, url)
    assert again.created == again.updated == 0 and again.unchanged == 8  # idempotent
    clean, _ = run_reconciliation(config, url)
    assert clean.found == [] and clean.errors == []

    # Plant one of each kind.
    subs["late"] = subscribe(local_stripe, org["late"], prices, seats=3)[1]  # missing_in_mirror
    local_stripe.store.remove_subscription(subs["gone"])  # missing_in_stripe
    local_stripe.store.update_subscription(subs["status"], status="past_due")
    local_stripe.store.update_subscription(subs["plan"], price=prices["business_monthly"])
    local_stripe.store.update_subscription(subs["seats"], quantity=4)
    with engine.begin() as conn:
        add_member(conn, org["crowded"])  # over_seat_limit: 4 members, 3 seats
        conn.execute(
            text(
                "UPDATE subscriptions SET synced_at = now() - interval '3 days' WHERE stripe_subscription_id = :s"
            ),
            {"s": subs["stale"]},
        )
    add_usage(engine, org["unpaid"], users=2)  # unpaid_active_usage: canceled, still used
    stray = local_stripe.store.add_customer(name="nobody's", metadata={})["id"]  # unlinked_customer
    broken = {**local_stripe.store.subscriptions[subs["fine"]], "id": "sub_broken", "status": "exploded"}
    local_stripe.store.put_raw("subscriptions", broken)

    first, _ = run_reconciliation(config, url)
    assert kinds(first.found) == Counter({k.value: 1 for k in DiscrepancyKind})
    where = {f.kind.value: (f.organization_id, f.stripe_subscription_id) for f in first.found}
    assert where["missing_in_mirror"] == (org["late"], subs["late"])
    assert where["missing_in_stripe"] == (org["gone"], subs["gone"])
    assert where["over_seat_limit"][0] == org["crowded"] and where["unpaid_active_usage"][0] == org["unpaid"]
    assert where["stale_mirror"] == (org["stale"], subs["stale"])
    unlinked = next(f for f in first.found if f.kind is DiscrepancyKind.unlinked_customer)
    assert unlinked.stripe_customer_id == stray and unlinked.organization_id is None
    status = next(f for f in first.found if f.kind is DiscrepancyKind.status_mismatch)
    assert (status.expected, status.actual) == ("past_due", "active")
    assert [e["id"] for e in first.errors] == ["sub_broken"] and "exploded" in first.errors[0]["error"]

    def shape(result: object) -> list[tuple]:  # type: ignore[type-arg]
        return [
            (f.kind, f.organization_id, f.stripe_subscription_id, f.expected, f.actual) for f in result.found
        ]  # type: ignore[attr-defined]

    second, _ = run_reconciliation(config, url)
    assert shape(second) == shape(first)  # the same data gives the same result
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT kind, count(*) FROM billing_discrepancies WHERE run_id = :r GROUP BY kind"),
                              {"r": second.run_id}).all()  # fmt: skip
    assert dict(stored) == {k.value: 1 for k in DiscrepancyKind}

    repaired, _ = run_reconciliation(config, url, repair=True)
    assert repaired.repaired == 6
    assert mirror_row(engine, subs["gone"]) is None
    assert mirror_row(engine, subs["status"])["status"] == "past_due"  # type: ignore[index]
    assert mirror_row(engine, subs["seats"])["seats"] == 4  # type: ignore[index]
    assert mirror_row(engine, subs["plan"])["plan"] == "business_monthly"  # type: ignore[index]
    assert mirror_row(engine, subs["late"])["organization_id"] == org["late"]  # type: ignore[index]
    with engine.connect() as conn:
        actors = conn.execute(text(
            "SELECT action, actor_type, actor_name FROM audit_log WHERE action LIKE 'billing.%' AND occurred_at >= "
            "(SELECT started_at FROM billing_reconciliation_runs WHERE id = :r)"), {"r": repaired.run_id}).all()  # fmt: skip
    # stale_mirror is repaired by confirming the row: nothing changed, so nothing to audit.
    assert Counter(a for a, _, _ in actors) == Counter({
        "billing.subscription_updated": 3, "billing.subscription_created": 1, "billing.subscription_removed": 1,
        "billing.customer_linked": 1,
    })  # fmt: skip
    assert {(t, n) for _, t, n in actors} == {("system", "billing-reconcile")}
    after, _ = run_reconciliation(config, url)
    assert kinds(after.found) == Counter(
        {"over_seat_limit": 1, "unpaid_active_usage": 1, "unlinked_customer": 1}
    )


def test_the_cli_prints_the_run_and_fails_cleanly_when_stripe_is_down(
    billing_db: tuple[str, Engine], local_stripe: LocalStripe, tmp_path: Path
) -> None:
    url, engine = billing_db
    prices = plans(local_stripe)
    org_id = insert_org(engine, members=4)
    subscribe(local_stripe, org_id, prices, seats=2)
    env = {**os.environ, "COLUMNS": "250", "KEEL_DATABASE_URL": url, "KEEL_DATA_DIR": str(tmp_path), "KEEL_STRIPE_API_KEY": local_stripe.api_key,
           "KEEL_STRIPE_API_BASE": local_stripe.url}  # fmt: skip

    def keel(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KEEL, *args], capture_output=True, text=True, env={**env, **extra}, cwd=tmp_path,
                              timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip

    synced = keel("billing", "sync", "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["created"] == 1
    shown = keel("billing", "reconcile")
    assert shown.returncode == 0, shown.stderr
    assert "over_seat_limit" in shown.stdout and "4 active members" in shown.stdout
    down = keel("billing", "reconcile", KEEL_STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "Stripe is unreachable" in down.stderr and "Traceback" not in down.stderr
    report = keel("billing", "report")
    assert (
        report.returncode == 0
        and "the latest run failed" in report.stderr
        and "over_seat_limit" in report.stdout
    )


def test_reconcile_flow_runs_in_prefect_exports_to_the_lake_and_retries_stripe_failures(
    billing_db: tuple[str, Engine],
    local_stripe: LocalStripe,
    tmp_path: Path,
    prefect_harness: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.flows import reconcile_billing, sync_billing

    url, engine = billing_db
    prices = plans(local_stripe)
    org_id = insert_org(engine, members=5)
    subscribe(local_stripe, org_id, prices, seats=3, status="past_due")
    lake = tmp_path / "lake"
    for name, value in {"KEEL_DATABASE_URL": url, "KEEL_DATA_DIR": str(tmp_path / "data"), "KEEL_LAKE_URL": str(lake),
                        "KEEL_WAREHOUSE_PATH": str(tmp_path / "w.duckdb"), "KEEL_STRIPE_API_KEY": local_stripe.api_key,
                        "KEEL_STRIPE_API_BASE": local_stripe.url, "KEEL_BILLING_RETRY_DELAY": "0"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)

    assert sync_billing()["created"] == 1
    result = reconcile_billing(repair=False)
    assert result["by_kind"] == {"over_seat_limit": 1} and result["usage_source"] == "postgres"
    assert result["exported"] == {
        "billing_discrepancies": 1,
        "subscriptions": 1,
        "billing_reconciliation_runs": 1,
    }
    found = pq.read_table(next(lake.glob("billing_discrepancies/date=*/*.parquet"))).to_pylist()
    assert [(r["kind"], r["organization_id"], r["repaired"]) for r in found] == [
        ("over_seat_limit", str(org_id), False)
    ]
    mirrored = pq.read_table(next(lake.glob("subscriptions/snapshot_date=*/*.parquet"))).to_pylist()
    assert [(r["organization_id"], r["status"], r["seats"]) for r in mirrored] == [
        (str(org_id), "past_due", 3)
    ]

    local_stripe.store.faults.status, local_stripe.store.faults.count = 503, None
    state = reconcile_billing(repair=True, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="Stripe answered an error"):
        state.result()
    with engine.connect() as conn:
        runs = dict(
            conn.execute(
                text("SELECT status, count(*) FROM billing_reconciliation_runs GROUP BY status")
            ).all()
        )
        found_rows = conn.execute(text("SELECT count(*) FROM billing_discrepancies")).scalar()
    assert runs == {
        "completed": 1,
        "failed": 3,
    }  # the task ran three times (two retries), writing nothing else
    assert found_rows == 1


def no_stripe_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Stripe in the environment, and after the test the environment as it was: the demo's
    Stripe exports its address for child processes (``start_demo_stripe``), which must not reach
    the tests that run after this one in the same process. (``delenv`` of a name that is not set
    records nothing to undo; a ``setenv`` first does.)"""
    for name in ("KEEL_STRIPE_API_KEY", "KEEL_STRIPE_API_BASE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_keel_devs_demo_stripe_plants_nothing_in_another_database_unless_asked(
    billing_db: tuple[str, Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KEEL_DATABASE_URL names a database that is not the embedded one and no Stripe key is set:
    keel dev starts no fake Stripe, links no org, plants no discrepancy, and says how to ask."""
    from api.demo import DEMO_ORGS
    from api.stripe_local.demo import reconcile_once, start_demo_stripe, state_path

    url, engine = billing_db
    for n, d in zip((8, 9), DEMO_ORGS, strict=False):
        insert_org(engine, members=n, slug=d[0])
    no_stripe_in_environment(monkeypatch)
    config = settings_for(url, None, tmp_path).with_(stripe_api_key=None)
    same, server, summary = start_demo_stripe(config, url, embedded=False)
    assert server is None and same == config
    assert summary.startswith("Stripe: none. KEEL_DATABASE_URL is not the embedded database")
    assert "--plant-demo-stripe" in summary
    assert "KEEL_STRIPE_API_BASE" not in os.environ and not state_path(config).exists()
    assert reconcile_once(same, url) == "no reconciliation (no Stripe to read)"
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM organizations WHERE stripe_customer_id IS NOT NULL")
            ).scalar()
            == 0
        )
        assert conn.execute(text("SELECT count(*) FROM subscriptions")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM billing_reconciliation_runs")).scalar() == 0


def test_the_demo_stripe_for_keel_dev_mirrors_the_orgs_and_plants_discrepancies(
    billing_db: tuple[str, Engine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.demo import DEMO_ORGS
    from api.stripe_local.demo import reconcile_once, start_demo_stripe, state_path

    url, engine = billing_db
    orgs = [insert_org(engine, members=n, slug=d[0]) for n, d in zip((8, 9, 10, 11), DEMO_ORGS, strict=True)]
    mine = insert_org(engine, members=3)  # an org a user made: the demo's Stripe leaves it alone
    no_stripe_in_environment(monkeypatch)
    config = settings_for(url, None, tmp_path).with_(stripe_api_key=None)
    local, server, summary = start_demo_stripe(config, url, embedded=False, plant_anywhere=True)
    assert server is not None
    try:
        assert os.environ["KEEL_STRIPE_API_BASE"] == server.url == local.stripe_api_base
        assert "seeded; 4 subscriptions mirrored" in summary
        assert reconcile_once(local, url).startswith("reconciliation found 4 discrepancies")
        ids = (sorted(server.store.customers), sorted(server.store.subscriptions))
        with engine.connect() as conn:
            linked = set(
                conn.execute(
                    text("SELECT id FROM organizations WHERE stripe_customer_id IS NOT NULL")
                ).scalars()
            )
            found = dict(
                conn.execute(text("SELECT kind, count(*) FROM billing_discrepancies GROUP BY kind")).all()
            )
            statuses = {s for (s,) in conn.execute(text("SELECT status FROM subscriptions")).all()}
        assert linked == set(orgs) and mine not in linked
        assert found == {
            "over_seat_limit": 1,
            "plan_mismatch": 1,
            "seat_count_mismatch": 1,
            "unlinked_customer": 1,
        }
        assert {"past_due", "trialing", "active"} <= statuses
    finally:
        server.stop()
    # A restart serves the saved state: the same ids, nothing synced, the same findings.
    assert state_path(config).is_file()
    local, server, summary = start_demo_stripe(config, url, embedded=False, plant_anywhere=True)
    assert server is not None
    try:
        assert f"state from {state_path(config)}" in summary
        assert (sorted(server.store.customers), sorted(server.store.subscriptions)) == ids
        assert reconcile_once(local, url) == (
            "reconciliation found 4 discrepancies"
            " (1 over_seat_limit, 1 plan_mismatch, 1 seat_count_mismatch, 1 unlinked_customer)"
        )
    finally:
        server.stop()
    real = config.with_(stripe_api_key="sk_live_real")
    assert start_demo_stripe(real, url, embedded=False) == (
        real,
        None,
        "Stripe: the real API (KEEL_STRIPE_API_KEY is set)",
    )
