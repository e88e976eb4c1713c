"""The staff console in a real browser: Debian's Chromium driven by Playwright (no download).

The scenarios of issue 19: sign in by link (and by token), search by a member's email, open the
org, see the subscription's seats and renewal date, suspend with a reason and see the status and
the audit entry, retry a failed delivery against a loopback receiver that now answers 200 and see
it succeed; as support, no suspend control and a 403 on a forged POST; a POST without the CSRF
token refused; sign-out ends the session. Every page is screenshotted under test-output/console/
and passed through axe-core (no serious or critical violation).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from sqlalchemy import Engine, text

from api.auth.models import PlatformRole
from api.settings import Settings
from tests.conftest import OUTPUT_DIR
from tests.console_support import email_of, run_async, sign_in_secret
from tests.harness import LiveServer, OrgWorld, audit_rows, auth, make_org, make_user, unique
from tests.hooks import create_endpoint, deliver, delivery_rows, publish
from tests.receivers import Arrival, Receiver, Reply
from tests.test_billing import seed_mirror
from tests.test_flag_targeting import group_call
from tests.test_flags import create_flag
from tests.test_health_report import CHROMIUM_ARGS

SHOTS = OUTPUT_DIR / "console"
BLOCKING = {"serious", "critical"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def accessible(page: Any, name: str) -> None:
    """axe-core (bundled by axe-playwright-python) over the page as it is now."""
    violations = Axe().run(page).response["violations"]
    blocking = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v.get("impact") in BLOCKING
    ]
    assert not blocking, f"{name}: {blocking}"


def sign_in(page: Any, server: LiveServer, settings: Settings, email: str) -> None:
    page.goto(f"{server.url}/console/login/{sign_in_secret(settings, email)}")
    page.wait_for_url(f"{server.url}/console")
    assert page.get_by_role("searchbox").is_visible()


class Switch:
    """A receiver's answer that the test turns from failure to success."""

    def __init__(self) -> None:
        self.ok = False

    def __call__(self, arrival: Arrival, n: int) -> Reply:
        return Reply(200) if self.ok else Reply(500, body=b"database down")


@pytest.fixture
def failing_org(
    hooks_client: httpx.Client, engine: Engine, hooks_settings: Settings
) -> Iterator[tuple[OrgWorld, dict[str, Any], Switch, Receiver]]:
    """An org with a subscription in the mirror and one delivery that failed every attempt."""
    world = make_org(hooks_client, engine)
    seed_mirror(engine, world.id, seats=12)
    switch = Switch()
    with Receiver(switch) as receiver:
        endpoint = create_endpoint(hooks_client, world, receiver.url)
        publish(hooks_client, world, "invoice.paid", {"n": 1})
        run_async(lambda: deliver(hooks_settings, world.id))
        assert [d["status"] for d in delivery_rows(engine, world.id)] == ["exhausted"]
        yield world, endpoint, switch, receiver


def test_admin_signs_in_by_link_finds_the_org_retries_a_delivery_and_suspends_it(
    page: Any,
    hooks_server: LiveServer,
    hooks_client: httpx.Client,
    hooks_settings: Settings,
    engine: Engine,
    failing_org: tuple[OrgWorld, dict[str, Any], Switch, Receiver],
) -> None:
    world, _, switch, receiver = failing_org
    _, admin_token = make_user(engine, platform_role=PlatformRole.admin)
    admin_email = email_of(hooks_client, admin_token)
    member_email = email_of(hooks_client, world.tokens["member"])
    base = hooks_server.url

    page.goto(f"{base}/console/login")
    shot(page, "login")
    accessible(page, "sign-in page")
    sign_in(page, hooks_server, hooks_settings, admin_email)

    # Search by a member's email: the org, with its status and plan.
    page.get_by_label("Name, slug, external id, member email or Stripe customer id").fill(member_email)
    page.get_by_role("button", name="Search").click()
    row = page.get_by_role("row").filter(has_text=f"Org {world.slug}")
    assert row.count() == 1
    assert "active" in row.inner_text() and "team_monthly" in row.inner_text()
    shot(page, "search")
    accessible(page, "search results")

    # A stream of the org's audit log (not delivered: no stream worker here) and a flag that a
    # rule on the org's plan turns on, for the audit streams and flags panels.
    stream = hooks_client.post(f"/v1/orgs/{world.id}/audit-streams", headers=world.headers("owner"), json={
        "name": "siem", "type": "splunk_hec", "token": "hec-token-1",
        "url": "https://splunk.example.com:8088/services/collector"})  # fmt: skip
    assert stream.status_code == 201, stream.text
    rule = unique("team-plan")
    flag = create_flag(hooks_client, admin_token, rollout_percentage=0, rules=[
        {"name": rule, "constraints": [{"field": "org.plan", "operator": "IN", "values": ["team_monthly"]}]}])  # fmt: skip
    # The org's traits (a Segment group call) and a Segment message naming no org: an ingestion warning.
    group_call(hooks_client, world, {"industry": "fintech"})
    lost = {"type": "track", "event": "Report Exported", "userId": "u-1", "messageId": unique("lost"),
            "context": {"groupId": unique("acct-ghost")}}  # fmt: skip
    answer = hooks_client.post("/segment/v1/batch", json={"batch": [lost]}, auth=(world.ingest_key, ""))
    assert answer.status_code == 200, answer.text

    # Org 360: the billing screen's seats, seats used and renewal date.
    row.get_by_role("link", name=f"Org {world.slug}").click()
    page.wait_for_url(re.compile(rf".*/console/orgs/{world.id}$"))
    with engine.connect() as conn:
        renewal = conn.execute(
            text("SELECT current_period_end FROM subscriptions WHERE organization_id = :o"), {"o": world.id}
        ).scalar_one()
    assert page.locator("#seats").inner_text() == "12"
    assert page.locator("#seats-used").inner_text() == "5"  # one active member per role
    assert page.locator("#renewal-date").inner_text() == renewal.strftime("%Y-%m-%d")
    assert "Chain verified" in page.locator("#audit-verify").inner_text()
    # The audit streams panel: the stream's lag as the API reports it (the page's own view included).
    listed = hooks_client.get(f"/v1/orgs/{world.id}/audit-streams", headers=world.headers("owner")).json()
    lag = listed["items"][0]["lag_entries"]
    streamed = page.locator(f"#stream-{stream.json()['id']}")
    assert lag > 0 and streamed.locator(".stream-lag-entries").inner_text() == str(lag)
    assert streamed.locator(".stream-status").inner_text() == "active"
    # The flags panel: the rule on the plan that turned the flag on.
    why = page.locator(f"#flag-{flag['key']}")
    assert why.locator(".flag-rule-name").inner_text() == rule
    assert f"on: rule '{rule}' matched" in why.locator(".flag-explanation").inner_text()
    view = hooks_client.get(f"/v1/admin/orgs/{world.id}", headers=auth(admin_token)).json()
    explained = next(f["explanation"] for f in view["flags"] if f["key"] == flag["key"])
    assert why.locator(".flag-explanation").inner_text() == explained
    # The ingestion warnings panel and the traits in the overview.
    warning = page.locator("#ingestion-warnings").get_by_role("row").filter(has_text=lost["messageId"])
    assert warning.locator(".warning-reason").inner_text() == "unknown_org"
    assert "fintech" in page.locator("#org-traits").inner_text()
    shot(page, "org")
    accessible(page, "org page")
    assert audit_rows(engine, organization_id=world.id, action="staff.org_viewed")

    # Retry the failed delivery: the receiver now answers 200, the worker sends it, the page shows it.
    [delivery] = delivery_rows(engine, world.id)
    switch.ok = True
    article = page.locator(f"#delivery-{delivery['id']}")
    assert "exhausted" in article.inner_text()
    article.get_by_label("Reason").fill("customer fixed their receiver")
    article.get_by_label("I confirm: retry delivery").check()
    article.get_by_role("button", name="Retry delivery").click()
    assert "queued to be sent again" in page.get_by_role("status").inner_text()
    run_async(lambda: deliver(hooks_settings, world.id))
    assert [d["status"] for d in delivery_rows(engine, world.id)] == ["succeeded"]
    assert receiver.arrivals[-1].method == "POST"
    page.reload()
    assert page.locator(f"#delivery-{delivery['id']}").count() == 0
    assert "No failing deliveries." in page.locator("#webhooks").inner_text()
    retried = audit_rows(engine, organization_id=world.id, action="webhook_delivery.retried")
    assert retried[-1]["metadata"]["reason"] == "customer fixed their receiver"
    assert retried[-1]["actor_type"] == "staff"

    # Suspend with a reason: the status changes at once and the audit entry is on the page.
    overview = page.locator("#overview")
    overview.get_by_label("Reason").fill("chargeback under review")
    overview.get_by_label("I confirm: suspend").check()
    overview.get_by_role("button", name="Suspend").click()
    assert page.locator("#org-status").inner_text() == "suspended"
    entries = page.locator("#audit-entries")
    suspended_row = entries.get_by_role("row").filter(has_text="org.suspended")
    assert "chargeback under review" in suspended_row.first.inner_text()
    assert page.get_by_role("button", name="Unsuspend").is_visible()
    shot(page, "org-suspended")
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM organizations WHERE id = :o"), {"o": world.id}
        ).scalar()
    assert status == "suspended"

    # The health page and the error page.
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Health").click()
    assert page.get_by_role("heading", name="Org health").is_visible()
    shot(page, "health")
    accessible(page, "health page")
    page.goto(f"{base}/console/orgs/{world.id.replace(world.id[-4:], 'ffff')}")
    assert page.get_by_role("alert").is_visible()
    accessible(page, "error page")

    # Signing out ends the session: the same cookie no longer opens a page.
    cookies = page.context.cookies()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/console/login")
    page.goto(f"{base}/console")
    page.wait_for_url(f"{base}/console/login")
    replay = httpx.get(
        f"{base}/console", cookies={c["name"]: c["value"] for c in cookies}, follow_redirects=False
    )
    assert replay.status_code == 303 and replay.headers["location"] == "/console/login"


def test_support_finds_no_suspend_control_and_a_forged_post_is_refused(
    page: Any, hooks_server: LiveServer, hooks_client: httpx.Client, hooks_settings: Settings, engine: Engine
) -> None:
    world = make_org(hooks_client, engine, roles=("owner",))
    _, support_token = make_user(engine, platform_role=PlatformRole.support)
    sign_in(page, hooks_server, hooks_settings, email_of(hooks_client, support_token))
    page.goto(f"{hooks_server.url}/console/orgs/{world.id}")
    assert page.get_by_role("heading", name=f"Org {world.slug}").is_visible()
    assert page.get_by_role("button", name="Suspend").count() == 0
    assert page.locator("form[action$='/suspend']").count() == 0
    assert page.get_by_role("button", name="Set override").count() == 0
    shot(page, "org-as-support")
    csrf = page.locator("input[name=csrf_token]").first.input_value()
    forged = page.request.post(
        f"{hooks_server.url}/console/orgs/{world.id}/suspend",
        form={"csrf_token": csrf, "reason": "forged", "confirm": "yes"},
    )
    assert forged.status == 403
    assert "may not do this" in forged.json()["detail"]
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM organizations WHERE id = :o"), {"o": world.id}
        ).scalar()
    assert status == "active"


def test_a_post_without_the_csrf_token_is_refused(
    page: Any, hooks_server: LiveServer, hooks_client: httpx.Client, hooks_settings: Settings, engine: Engine
) -> None:
    world = make_org(hooks_client, engine, roles=("owner",))
    _, admin_token = make_user(engine, platform_role=PlatformRole.admin)
    sign_in(page, hooks_server, hooks_settings, email_of(hooks_client, admin_token))
    url = f"{hooks_server.url}/console/orgs/{world.id}/suspend"
    missing = page.request.post(url, form={"reason": "no token", "confirm": "yes"})
    assert missing.status == 403 and "CSRF" in missing.json()["detail"]
    wrong = page.request.post(url, form={"csrf_token": "0" * 64, "reason": "bad token", "confirm": "yes"})
    assert wrong.status == 403
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM organizations WHERE id = :o"), {"o": world.id}
        ).scalar()
    assert status == "active"
    assert not audit_rows(engine, organization_id=world.id, action="org.suspended")


def test_signing_in_by_exchanging_a_user_token(page: Any, hooks_server: LiveServer, engine: Engine) -> None:
    _, support_token = make_user(engine, platform_role=PlatformRole.support)
    page.goto(f"{hooks_server.url}/console/login")
    page.get_by_label("Your user token").fill(support_token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{hooks_server.url}/console")
    assert "(support)" in page.get_by_role("banner").inner_text()
    # A token of someone who is not staff opens nothing.
    _, plain_token = make_user(engine)
    page.context.clear_cookies()
    page.goto(f"{hooks_server.url}/console/login")
    page.get_by_label("Your user token").fill(plain_token)
    page.get_by_role("button", name="Sign in").click()
    assert "only platform staff" in page.get_by_role("alert").inner_text()


def test_search_as_you_type_with_htmx_under_the_csp(
    page: Any, hooks_server: LiveServer, hooks_client: httpx.Client, hooks_settings: Settings, engine: Engine
) -> None:
    # htmx is Keel's own file: it loads and works under `script-src 'self'`, and nothing is refused.
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    world = make_org(hooks_client, engine, roles=("owner",))
    _, token = make_user(engine, platform_role=PlatformRole.support)
    sign_in(page, hooks_server, hooks_settings, email_of(hooks_client, token))
    assert page.evaluate("typeof window.htmx") == "object"
    page.get_by_role("searchbox").press_sequentially(world.slug, delay=20)
    page.locator("#results").get_by_role("link", name=f"Org {world.slug}").wait_for()
    page.keyboard.press("Tab")  # keyboard: the next control after the box is its button
    assert page.evaluate("document.activeElement.textContent") == "Search"
    assert refused == []
