"""The org health report as an account manager reads it, in Chromium at 1,000 px: planted
organizations (over the seat limit, a trial about to end, a renewal date in the past, an open
billing discrepancy, a young organization) each show their reasons in words; the seat text is
readable (WCAG AA); every WAU chart has the same dated window; the table fits the width.

Everything is real: a database of its own (reconciliation looks at every organization), the API
over HTTP, the local Stripe-compatible server through the official SDK, the lake export, the
warehouse build and the browser."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from api.app import create_app
from api.auth.models import PlatformRole
from api.billing.services import run_reconciliation, run_sync
from api.db.engine import make_sync_engine
from api.settings import Settings
from api.stripe_local import LocalStripe, StripeStore
from api.stripe_local.seed import add_plans
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import LiveServer, auth, make_org, make_user
from warehouse.build import build_warehouse
from warehouse.report import CHART_DAYS, CHART_WIDTH, chart_window, write_report

OUTPUT = Path(os.environ.get("KEEL_TEST_OUTPUT", Path(__file__).resolve().parents[1] / "test-output"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
HISTORY_DAYS = 60  # as the demo seeds: longer than the chart's window
YOUNG_DAYS = 10


@dataclass
class Planted:
    id: str
    name: str
    users: int
    days: int = HISTORY_DAYS
    seats: int | None = None
    status: str = "active"
    trial_in_days: int | None = None
    renewal_in_days: int = 20
    #: Seats Stripe moves to after the mirror's sync: a seat_count_mismatch for reconciliation.
    stripe_seats_later: int | None = None
    stripe_id: str = ""


def noon(day: date) -> int:
    return int(datetime.combine(day, time(12), tzinfo=UTC).timestamp())


def weekly_activity(org: Planted, as_of: date) -> list[dict[str, Any]]:
    """Everyone on the organization's first day, then each user once a week on a different
    weekday: a complete 7-day window holds them all, a partial one fewer (a chart that drew
    partial windows would ramp)."""
    events = []
    for back in range(org.days):
        day = as_of - timedelta(days=back)
        for user in range(org.users):
            if (back + user) % 7 == 0 or back == org.days - 1:
                events.append({
                    "event": "dashboard.viewed", "user_id": f"user-{user}", "message_id": f"{day}-{user}",
                    "timestamp": datetime.combine(day, time(9), tzinfo=UTC).isoformat(),
                })  # fmt: skip
    return events


@pytest.fixture
def report_db(migrated_database: str) -> Iterator[str]:
    yield migrated_database


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright (no browser download). Playwright's sync API runs an
    event loop in this thread while open, so the planting (asyncio inside) happens before."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def plant(report_db: str, tmp_path: Path) -> tuple[dict[str, Planted], Path, date, dict[str, Any]]:
    """The planted organizations, through the API and Stripe, exported and built into a warehouse."""
    as_of = datetime.now(UTC).date()
    warehouse = tmp_path / "warehouse.duckdb"
    engine = make_sync_engine(report_db)
    with LocalStripe(StripeStore(seed=13)) as stripe:
        settings = Settings(
            database_url=report_db, data_dir=tmp_path / "data", warehouse_path=warehouse,
            stripe_api_key=stripe.api_key, stripe_api_base=stripe.url,
        )  # fmt: skip
        prices = add_plans(stripe.store, at=noon(as_of - timedelta(days=90)))
        with (
            LiveServer(create_app(settings)) as server,
            httpx.Client(base_url=server.url, timeout=30) as client,
        ):
            wanted = [
                Planted("", "Over Seats Co", users=4, seats=3),
                Planted("", "Trial Ends Soon", users=8, seats=10, status="trialing", trial_in_days=5),
                Planted("", "Lapsed Renewal", users=8, seats=10, renewal_in_days=-5),
                Planted("", "Discrepancy Inc", users=8, seats=10, stripe_seats_later=12),
                Planted("", "Young Startup", users=4, days=YOUNG_DAYS),
                Planted("", "Steady Corp", users=8, seats=10),
            ]
            planted: dict[str, Planted] = {}
            for org in wanted:
                world = make_org(client, engine)  # five active members, one per role
                renamed = client.patch(
                    f"/v1/orgs/{world.id}", json={"name": org.name}, headers=world.headers("owner")
                )
                assert renamed.status_code == 200, renamed.text
                org.id = world.id
                planted[org.name] = org
                sent = client.post("/v1/events/batch", json={"events": weekly_activity(org, as_of)},
                                   headers=auth(world.ingest_key))  # fmt: skip
                assert sent.status_code == 200 and not sent.json()["rejected"], sent.text
                if org.seats is None:
                    continue
                customer = stripe.store.add_customer(name=org.name, metadata={"organization_id": org.id})
                created = as_of + timedelta(days=org.renewal_in_days) - timedelta(days=30)  # 30-day periods
                trial_end = (
                    noon(as_of + timedelta(days=org.trial_in_days)) if org.trial_in_days is not None else None
                )
                org.stripe_id = stripe.store.add_subscription(
                    customer["id"], prices["team_monthly"], quantity=org.seats, status=org.status,
                    metadata={"organization_id": org.id}, trial_end=trial_end, at=noon(created),
                )["id"]  # fmt: skip
            assert run_sync(settings, report_db).created == 5
            for org in planted.values():
                if org.stripe_seats_later is not None:
                    stripe.store.update_subscription(org.stripe_id, quantity=org.stripe_seats_later)
            reconciled, _ = run_reconciliation(settings, report_db)
            staff = auth(make_user(engine, platform_role=PlatformRole.admin)[1])

            lake = Lake.open(str(tmp_path / "lake"))
            export_tasks.write_schemas(lake)
            for table in export_tasks.INCREMENTAL.values():
                export_tasks.export_table(report_db, lake, table)
            for snapshot in export_tasks.SNAPSHOTS.values():
                export_tasks.export_snapshot(report_db, lake, snapshot)
            build_warehouse(str(tmp_path / "lake"), warehouse, as_of=as_of)
            # The admin health view serves the same mart.
            api_health = {
                org.name: client.get(f"/v1/admin/orgs/{org.id}/health", headers=staff).json()
                for org in planted.values()
            }
    engine.dispose()
    found = {(f.kind.value, str(f.organization_id)) for f in reconciled.found}
    return planted, warehouse, as_of, {"found": found, "api": api_health}


CONTRAST_JS = """
(selector) => {
  // Every element matching selector that holds text: its text colour (fill, for SVG text) and the
  // colour really painted behind its middle (what elementsFromPoint finds under it, composited).
  const parse = (c) => {
    const m = (c || '').match(/[\\d.]+/g);
    return m && m.length >= 3 ? [+m[0], +m[1], +m[2], m.length > 3 ? +m[3] : 1] : null;
  };
  const isSvg = (n) => n instanceof SVGElement;
  const paint = (n) => isSvg(n)
    ? (n instanceof SVGTextElement || n instanceof SVGSVGElement ? null : parse(getComputedStyle(n).fill))
    : parse(getComputedStyle(n).backgroundColor);
  const backdrop = (el) => {
    el.scrollIntoView({ block: 'center', inline: 'center' });
    const box = el.getBoundingClientRect();
    const stack = document.elementsFromPoint(box.left + box.width / 2, box.top + box.height / 2)
      .filter((n) => (n === el ? !isSvg(el) : !el.contains(n)));
    const layers = [];
    for (const n of stack) {
      const p = paint(n);
      if (p && p[3] > 0) { layers.push(p); if (p[3] >= 1) break; }
    }
    let out = [255, 255, 255];
    for (const [r, g, b, a] of layers.reverse()) out = [r * a + out[0] * (1 - a), g * a + out[1] * (1 - a), b * a + out[2] * (1 - a)];
    return out;
  };
  return Array.from(document.querySelectorAll(selector))
    .filter((el) => Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim()))
    .filter((el) => el.getClientRects().length > 0)  // rendered (an SVG <title> is not)
    .map((el) => ({
      text: el.textContent.trim().slice(0, 60),
      color: parse(isSvg(el) ? getComputedStyle(el).fill : getComputedStyle(el).color).slice(0, 3),
      background: backdrop(el),
    }));
}
"""


def contrast(a: list[float], b: list[float]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""

    def luminance(rgb: list[float]) -> float:
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_report_names_every_planted_case_readably_at_1000px(report_db: str, tmp_path: Path) -> None:
    planted, warehouse, as_of, seen = plant(report_db, tmp_path)
    orgs = {name: org.id for name, org in planted.items()}

    # Reconciliation and the mart use one seats-used rule: the same organizations are over the limit.
    with duckdb.connect(str(warehouse), read_only=True) as con:
        over = {
            r[0]
            for r in con.execute("SELECT organization_id FROM org_health WHERE over_seat_limit").fetchall()
        }

        def complete(name: str) -> list[bool]:
            rows = con.execute(
                "SELECT wau_complete FROM org_active_users WHERE organization_id = ? ORDER BY day",
                [orgs[name]],
            ).fetchall()
            return [r[0] for r in rows]

        steady, young = complete("Steady Corp"), complete("Young Startup")
    assert (
        over == {org for kind, org in seen["found"] if kind == "over_seat_limit"} == {orgs["Over Seats Co"]}
    )
    assert ("seat_count_mismatch", orgs["Discrepancy Inc"]) in seen["found"]
    # The lake's first six days hold partial weeks of an org already active then, never of a young one.
    assert steady == [False] * 6 + [True] * (HISTORY_DAYS - 6) and young == [True] * YOUNG_DAYS

    over_api = seen["api"]["Over Seats Co"]
    assert over_api["over_seat_limit"] is True and over_api["score"] == 100 and over_api["label"] == "healthy"
    assert [s["kind"] for s in over_api["signals"]] == ["expansion"] and over_api["signals"][0]["points"] == 0
    assert seen["api"]["Discrepancy Inc"]["open_discrepancies"] == 1
    assert seen["api"]["Trial Ends Soon"]["trial_end"] == str(as_of + timedelta(days=5))

    page_file = write_report(warehouse, tmp_path / "org-health.html", "html")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(page_file.as_uri())
        read_like_an_account_manager(page, orgs, as_of)


def read_like_an_account_manager(page: Any, orgs: dict[str, str], as_of: date) -> None:

    def reasons(name: str) -> str:
        return page.locator(f'tbody[data-organization-id="{orgs[name]}"] ul.reasons').inner_text()

    renewal = as_of - timedelta(days=5)
    expected = {
        "Over Seats Co": ["no warning signs", "Expansion signal: 5 active members on 3 seats bought, 2 over the seat limit (billing reconciliation recorded it on"],
        "Trial Ends Soon": [f"The trial ends on {as_of + timedelta(days=5)} (in 5 days) and nothing is paid yet."],
        "Lapsed Renewal": [f"The renewal date, {renewal}, passed 5 day(s) ago without a renewal"],
        "Discrepancy Inc": ["seat count mismatch, medium severity", "the mirror's seats differs from Stripe's (expected 12, found 10)"],
        "Young Startup": ["no warning signs"],
        "Steady Corp": ["no warning signs"],
    }  # fmt: skip
    for name, phrases in expected.items():
        text = reasons(name)
        for phrase in phrases:
            assert phrase in text, (name, text)
    for name in ("Trial Ends Soon", "Lapsed Renewal", "Discrepancy Inc"):
        assert "no warning signs" not in reasons(name)
        assert re.search("\N{MINUS SIGN}1[05]", reasons(name))  # the points each risk takes off
    for name in ("Young Startup", "Steady Corp", "Trial Ends Soon", "Lapsed Renewal", "Discrepancy Inc"):
        assert "Expansion signal" not in reasons(name)
    expansion = page.locator(f'tbody[data-organization-id="{orgs["Over Seats Co"]}"] li.expansion')
    assert expansion.count() == 1 and expansion.locator(".tag").inner_text() == "expansion"
    over_seats = page.locator(
        f'tbody[data-organization-id="{orgs["Over Seats Co"]}"] td.seats-cell'
    ).inner_text()
    assert (
        "5 members on 3 seats: 2 over the limit" in over_seats
        and "4 active users on 3 seats (133%)" in over_seats
    )
    scores = {
        name: int(page.locator(f'tbody[data-organization-id="{oid}"] .score').inner_text())
        for name, oid in orgs.items()
    }
    assert scores == {"Over Seats Co": 100, "Trial Ends Soon": 85, "Lapsed Renewal": 85, "Discrepancy Inc": 90,
                      "Young Startup": 100, "Steady Corp": 100}  # fmt: skip

    # Readable: the seat text (and every other text of the table) against what is really behind it.
    seat_texts = page.evaluate(CONTRAST_JS, "td.seats-cell, td.seats-cell *")
    assert len(seat_texts) >= 2 * len(orgs)
    for item in seat_texts + page.evaluate(CONTRAST_JS, "#health, #health *"):
        ratio = contrast(item["color"], item["background"])
        assert ratio >= 4.5, (item, round(ratio, 2))

    # Charts: the same dated window for every org, named in the header; a young org is not stretched.
    start, end = chart_window(as_of)
    assert (end - start).days == CHART_DAYS - 1
    assert f"{start} to {end}" in page.locator("th.wau-col").inner_text()
    assert page.locator(".axis-start").all_inner_texts() == [str(start)] * len(orgs)
    assert page.locator(".axis-end").all_inner_texts() == [str(end)] * len(orgs)

    def line(name: str) -> list[tuple[float, float]]:
        points = page.locator(f'tbody[data-organization-id="{orgs[name]}"] svg.wau polyline').get_attribute(
            "points"
        )
        return [(float(x), float(y)) for x, y in (p.split(",") for p in (points or "").split())]

    young = line("Young Startup")  # its first day, as_of - (YOUNG_DAYS - 1), sits that far along the axis
    first_day_x = (CHART_DAYS - YOUNG_DAYS) / (CHART_DAYS - 1) * CHART_WIDTH
    assert abs(young[0][0] - first_day_x) < 0.2 and young[-1][0] == CHART_WIDTH and len(young) == YOUNG_DAYS
    steady = line("Steady Corp")
    assert steady[0][0] == 0 and steady[-1][0] == CHART_WIDTH and len(steady) == CHART_DAYS
    assert {y for _, y in steady} == {steady[0][1]}, (
        "the same users every week: a flat line, no ramp at its start"
    )

    # Usable at 1,000 px: nothing wider than the window, no cell's content spilling out of it.
    widths = page.evaluate(
        "() => ({ page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],"
        " spills: Array.from(document.querySelectorAll('#health td, #health th'))"
        ".filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.textContent.slice(0, 60)) })"
    )
    assert widths["page"][0] <= widths["page"][1], widths
    assert widths["spills"] == [], widths
    # The table still sorts, each org's row and its reasons moving together.
    page.locator("th.score-col").click()
    ordered = [int(s) for s in page.locator("tbody.org .score").all_inner_texts()]
    assert ordered == sorted(ordered) and ordered != [scores[name] for name in sorted(scores)]
    for group in page.locator("tbody.org").all():
        name = group.locator("strong").first.inner_text()
        assert expected[name][0] in group.locator("ul.reasons").inner_text()

    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.locator("th.organization").click()  # by name, as an account manager would read it
    page.screenshot(path=str(OUTPUT / "org-health-report-1000px.png"), full_page=True)
    page.close()
