"""The console over HTTP: its sessions (cookie flags, one-use links, idle time, revocation when
staff status goes), its security headers, search by every key, each action's confirmation,
reason and audit entry, and bad input answered precisely."""

from __future__ import annotations

import contextlib
import html
import re
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from api.auth.models import PlatformRole
from api.cli import app as cli
from api.settings import Settings
from tests.console_support import CSRF, console_session, email_of, sign_in_secret
from tests.harness import LiveServer, OrgWorld, audit_rows, auth, make_user, unique
from tests.test_billing import seed_mirror
from tests.test_flag_targeting import group_call
from tests.test_flags import create_flag
from tests.test_stripe_inbound import send, stripe_event


@pytest.fixture
def admin(
    live_server: LiveServer, settings: Settings, engine: Engine, client: httpx.Client
) -> tuple[httpx.Client, str, str]:
    """(signed-in console client, its CSRF token, the admin's bearer token)."""
    _, token = make_user(engine, platform_role=PlatformRole.admin)
    session, csrf = console_session(live_server.url, settings, email_of(client, token))
    with contextlib.closing(session):
        yield session, csrf, token


def session_row(engine: Engine, email: str) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT s.* FROM console_sessions s JOIN users u ON u.id = s.user_id"
                    " WHERE u.email = :e ORDER BY s.id DESC LIMIT 1"
                ),
                {"e": email},
            )
            .one()
            ._mapping
        )


def test_the_session_cookie_and_the_security_headers(
    live_server: LiveServer, settings: Settings, engine: Engine, client: httpx.Client
) -> None:
    _, token = make_user(engine, platform_role=PlatformRole.support)
    with httpx.Client(base_url=live_server.url) as browser:
        signed = browser.get(f"/console/login/{sign_in_secret(settings, email_of(client, token))}")
        assert signed.status_code == 200
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("keel_console=keel_cs_")
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP here; KEEL_CONSOLE_SECURE_COOKIE behind HTTPS
        assert '<meta http-equiv="refresh" content="0; url=/console">' in signed.text
        page = browser.get("/console", headers={"accept": "text/html"})
        assert page.status_code == 200
    for response in (signed, page):
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
    # No inline script anywhere: every <script> names a file Keel serves.
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert scripts and all('src="/console/static/' in s for s in scripts)
    htmx = client.get("/console/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:200]


def test_a_link_is_used_once_and_only_staff_get_one(
    live_server: LiveServer, settings: Settings, engine: Engine, client: httpx.Client
) -> None:
    _, token = make_user(engine, platform_role=PlatformRole.admin)
    secret = sign_in_secret(settings, email_of(client, token))
    assert client.get(f"/console/login/{secret}").status_code == 200
    again = client.get(f"/console/login/{secret}")
    assert again.status_code == 401 and "used already" in again.text
    assert "set-cookie" not in again.headers
    assert client.get("/console/login/keel_cl_nonsense").status_code == 401
    _, plain = make_user(engine)
    with pytest.raises(Exception, match="only platform staff"):
        sign_in_secret(settings, email_of(client, plain))


def test_keel_console_login_prints_a_link_that_signs_in(
    live_server: LiveServer, settings: Settings, database_url: str, engine: Engine, client: httpx.Client
) -> None:
    _, token = make_user(engine, platform_role=PlatformRole.support)
    email = email_of(client, token)
    result = CliRunner().invoke(
        cli, ["console", "login", "--email", email, "--base-url", live_server.url],
        env={"KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(settings.data_dir)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    link = result.stdout.strip().splitlines()[0]
    assert link.startswith(f"{live_server.url}/console/login/keel_cl_")
    with httpx.Client() as browser:
        assert browser.get(link).status_code == 200
        assert browser.get(f"{live_server.url}/console", follow_redirects=False).status_code == 200
    refused = CliRunner().invoke(
        cli, ["console", "login", "--email", "nobody@nowhere.example"],
        env={"KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(settings.data_dir)},
    )  # fmt: skip
    assert refused.exit_code == 1 and "no user has the email" in refused.output


@pytest.mark.parametrize("change", ["platform role removed", "user disabled", "idle too long"])
def test_a_session_ends_when_staff_status_goes_or_it_idles(
    live_server: LiveServer, settings: Settings, engine: Engine, client: httpx.Client, change: str
) -> None:
    user_id, token = make_user(engine, platform_role=PlatformRole.support)
    email = email_of(client, token)
    session, _ = console_session(live_server.url, settings, email)
    with engine.begin() as conn:
        if change == "platform role removed":
            conn.execute(text("UPDATE users SET platform_role = NULL WHERE id = :u"), {"u": user_id})
        elif change == "user disabled":
            conn.execute(text("UPDATE users SET status = 'disabled' WHERE id = :u"), {"u": user_id})
        else:
            idle = timedelta(seconds=settings.console_idle_timeout + 1)
            conn.execute(
                text("UPDATE console_sessions SET last_seen_at = last_seen_at - :d WHERE user_id = :u"),
                {"d": idle, "u": user_id},
            )
    with contextlib.closing(session):
        response = session.get("/console")
        assert response.status_code == 303 and response.headers["location"] == "/console/login"
        if change != "idle too long":
            assert session_row(engine, email)["revoked_at"] is not None
            with engine.begin() as conn:  # restored: the revoked session stays ended
                conn.execute(
                    text("UPDATE users SET platform_role = 'support', status = 'active' WHERE id = :u"),
                    {"u": user_id},
                )
            assert session.get("/console").status_code == 303


def test_search_by_name_slug_external_id_member_email_and_stripe_customer(
    admin: tuple[httpx.Client, str, str], client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    session, _, token = admin
    external, customer = f"acct-{uuid.uuid4().hex[:8]}", f"cus_{uuid.uuid4().hex[:14]}"
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE organizations SET external_id = :x, stripe_customer_id = :c WHERE id = :o"),
            {"x": external, "c": customer, "o": org.id},
        )
    member = email_of(client, org.tokens["viewer"])
    for q in (f"Org {org.slug}", org.slug, external, member.upper(), customer):
        found = session.get("/console", params={"q": q})
        assert found.status_code == 200
        assert f"/console/orgs/{org.id}" in found.text, q
        api = client.get("/v1/admin/orgs", params={"q": q}, headers=auth(token)).json()["items"]
        assert [o["id"] for o in api] == [org.id], q
    # A prefix of a customer id is not a match (ids are compared whole), and htmx gets the table alone.
    assert f"/console/orgs/{org.id}" not in session.get("/console", params={"q": customer[:-2]}).text
    fragment = session.get("/console", params={"q": org.slug}, headers={"hx-request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text and org.slug in fragment.text
    too_long = session.get("/console", params={"q": "x" * 201})
    assert too_long.status_code == 422
    assert too_long.headers["content-type"].startswith("application/problem+json")


def test_actions_need_a_confirmation_and_a_reason(
    admin: tuple[httpx.Client, str, str], engine: Engine, org: OrgWorld
) -> None:
    session, csrf, _ = admin
    url = f"/console/orgs/{org.id}/suspend"
    cases = [
        ({"reason": "why"}, "confirm"),
        ({"confirm": "yes"}, "reason"),
        ({"confirm": "yes", "reason": "   "}, "reason"),
        ({"confirm": "yes", "reason": "x" * 501}, "reason"),
    ]
    for form, field in cases:
        response = session.post(url, data={"csrf_token": csrf, **form})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
    page = session.post(url, data={"csrf_token": csrf, "reason": "why"}, headers={"accept": "text/html"})
    assert page.status_code == 422 and "tick the confirmation box" in page.text
    ghost = session.post(
        f"/console/orgs/{uuid.uuid4()}/suspend", data={"csrf_token": csrf, "reason": "r", "confirm": "yes"}
    )
    assert ghost.status_code == 404
    assert not audit_rows(engine, organization_id=org.id, action="org.suspended")


def test_unsuspend_flag_override_recover_and_reprocess_are_audited_with_their_reasons(
    admin: tuple[httpx.Client, str, str], client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    session, csrf, token = admin

    def act(path: str, reason: str, **extra: str) -> httpx.Response:
        response = session.post(
            f"/console/orgs/{org.id}/{path}",
            data={"csrf_token": csrf, "reason": reason, "confirm": "yes", **extra},
        )
        assert response.status_code == 303, response.text
        return response

    act("suspend", "fraud check")
    assert (
        act("unsuspend", "cleared by finance").headers["location"].startswith(f"/console/orgs/{org.id}?done=")
    )
    lifted = audit_rows(engine, organization_id=org.id, action="org.unsuspended")
    assert lifted[-1]["metadata"]["reason"] == "cleared by finance"

    key = f"console-{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/v1/admin/flags", json={"key": key, "enabled": True, "rollout_percentage": 0}, headers=auth(token)
    )
    assert created.status_code == 201, created.text
    act(f"flags/{key}/override", "beta for this customer", enabled="on")
    page = session.get(f"/console/orgs/{org.id}")
    row = re.search(rf"<code>{key}</code>.*?</tr>", page.text, re.S)
    assert row and "<td>on</td>" in row.group(0) and "beta for this customer" in row.group(0)
    bad = session.post(
        f"/console/orgs/{org.id}/flags/{key}/override",
        data={"csrf_token": csrf, "reason": "r", "confirm": "yes", "enabled": "maybe"},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "enabled"
    act(f"flags/{key}/override/clear", "beta over")
    assert [e["action"] for e in audit_rows(engine, organization_id=org.id) if e["resource_id"] == key] == [
        "flag.override_set", "flag.override_removed",
    ]  # fmt: skip

    endpoint = client.post(
        f"/v1/orgs/{org.id}/webhook-endpoints", json={"url": "https://hooks.example.com/c"},
        headers=org.headers("owner"),
    ).json()  # fmt: skip
    act(f"endpoints/{endpoint['id']}/recover", "receiver back up", hours="48")
    recovered = audit_rows(engine, organization_id=org.id, action="webhook_endpoint.recovered")
    assert recovered[-1]["metadata"]["reason"] == "receiver back up"
    assert recovered[-1]["actor_type"] == "staff"
    hours = session.post(
        f"/console/orgs/{org.id}/endpoints/{endpoint['id']}/recover",
        data={"csrf_token": csrf, "reason": "r", "confirm": "yes", "hours": "ever"},
    )
    assert hours.status_code == 422 and hours.json()["errors"][0]["field"] == "hours"

    customer = f"cus_{uuid.uuid4().hex[:14]}"
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE organizations SET stripe_customer_id = :c WHERE id = :o"),
            {"c": customer, "o": org.id},
        )
    event = stripe_event("invoice.paid")
    event["data"]["object"] = {**event["data"]["object"], "customer": customer}
    assert send(client, event).status_code == 200
    page = session.get(f"/console/orgs/{org.id}")
    assert event["id"] in page.text  # the org's inbound Stripe events
    with engine.connect() as conn:
        inbound_id = conn.execute(
            text("SELECT id FROM inbound_events WHERE external_id = :e"), {"e": event["id"]}
        ).scalar_one()
    act(f"inbound-events/{inbound_id}/reprocess", "mirror looked stale")
    reprocessed = audit_rows(engine, action="inbound_event.reprocessed", resource_id=str(inbound_id))
    assert reprocessed[-1]["metadata"]["reason"] == "mirror looked stale"


def test_every_staff_view_of_an_org_is_audited(
    admin: tuple[httpx.Client, str, str], engine: Engine, org: OrgWorld
) -> None:
    session, _, _ = admin
    before = len(audit_rows(engine, organization_id=org.id, action="staff.org_viewed"))
    assert session.get(f"/console/orgs/{org.id}").status_code == 200
    viewed = audit_rows(engine, organization_id=org.id, action="staff.org_viewed")
    assert len(viewed) == before + 1 and viewed[-1]["actor_type"] == "staff"
    reports = len(audit_rows(engine, action="staff.report_viewed"))
    health = session.get("/console/health", params={"sort": "trend", "at_risk": "true"})
    assert health.status_code == 200 and "Failing webhook endpoints" in health.text
    assert len(audit_rows(engine, action="staff.report_viewed")) == reports + 1
    bad_sort = session.get("/console/health", params={"sort": "nonsense"})
    assert bad_sort.status_code == 422
    assert bad_sort.headers["content-type"].startswith("application/problem+json")


def test_csrf_token_is_bound_to_the_session(
    live_server: LiveServer, settings: Settings, engine: Engine, client: httpx.Client, org: OrgWorld
) -> None:
    _, one = make_user(engine, platform_role=PlatformRole.admin)
    _, two = make_user(engine, platform_role=PlatformRole.admin)
    first, first_csrf = console_session(live_server.url, settings, email_of(client, one))
    second, second_csrf = console_session(live_server.url, settings, email_of(client, two))
    with contextlib.closing(first), contextlib.closing(second):
        assert first_csrf != second_csrf
        crossed = second.post(
            f"/console/orgs/{org.id}/suspend",
            data={"csrf_token": first_csrf, "reason": "r", "confirm": "yes"},
        )
        assert crossed.status_code == 403
        # The header works too (htmx requests), with the session's own token.
        header = second.post(
            f"/console/orgs/{org.id}/suspend", data={"reason": "r", "confirm": "yes"},
            headers={"x-csrf-token": second_csrf},
        )  # fmt: skip
        assert header.status_code == 303
        assert CSRF.search(second.get(f"/console/orgs/{org.id}").text)


def test_rerunning_reconciliation_from_the_org_page(
    settings: Settings, engine: Engine, client: httpx.Client, org: OrgWorld, live_server: LiveServer
) -> None:
    from api.app import create_app
    from api.stripe_local import LocalStripe, StripeStore
    from tests.billing_support import plans, subscribe

    _, token = make_user(engine, platform_role=PlatformRole.support)
    email = email_of(client, token)
    # Without Stripe configured: a precise 503, and the failed run is recorded as the CLI's is.
    session, csrf = console_session(live_server.url, settings, email)
    with contextlib.closing(session):
        down = session.post(
            f"/console/orgs/{org.id}/reconcile",
            data={"csrf_token": csrf, "reason": "check", "confirm": "yes"},
        )
        assert down.status_code == 503 and "could not read Stripe" in down.json()["detail"]
    with LocalStripe(StripeStore(seed=11)) as stripe:
        # In Stripe, not in the mirror: the run finds it for this org.
        subscribe(stripe, uuid.UUID(org.id), plans(stripe), seats=7)
        stripe_settings = settings.with_(stripe_api_key=stripe.api_key, stripe_api_base=stripe.url)
        with LiveServer(create_app(stripe_settings)) as server:
            session, csrf = console_session(server.url, stripe_settings, email)
            with contextlib.closing(session):
                ran = session.post(
                    f"/console/orgs/{org.id}/reconcile",
                    data={"csrf_token": csrf, "reason": "customer says seats are wrong", "confirm": "yes"},
                )
                assert ran.status_code == 303, ran.text
                page = session.get(ran.headers["location"])
    [entry] = audit_rows(engine, organization_id=org.id, action="billing.reconciliation_requested")
    assert entry["actor_type"] == "staff"
    assert entry["metadata"]["reason"] == "customer says seats are wrong"
    assert entry["metadata"]["discrepancies_for_org"] >= 1
    assert "Reconciliation ran" in page.text and "discrepanc" in page.text
    assert "No reconciliation has run yet." not in page.text


def test_the_health_page_lists_failing_endpoints_across_orgs(
    admin: tuple[httpx.Client, str, str], client: httpx.Client, org: OrgWorld, other_org: OrgWorld
) -> None:
    session, _, _ = admin
    urls = {}
    for world, healthy in ((org, False), (other_org, True)):
        url = f"https://hooks.example.com/{uuid.uuid4().hex[:8]}"
        created = client.post(
            f"/v1/orgs/{world.id}/webhook-endpoints", json={"url": url}, headers=world.headers("owner")
        )
        assert created.status_code == 201, created.text
        if not healthy:  # switched off by the customer: shown as failing (disabled)
            disabled = client.patch(
                f"/v1/orgs/{world.id}/webhook-endpoints/{created.json()['id']}",
                json={"enabled": False}, headers=world.headers("owner"),
            )  # fmt: skip
            assert disabled.status_code == 200, disabled.text
        urls[world.id] = url
    page = session.get("/console/health").text
    failing = page[page.index('id="h-failing"') :]
    assert urls[org.id] in failing and f"/console/orgs/{org.id}#webhooks" in failing
    assert f"Org {org.slug}" in failing
    assert urls[other_org.id] not in failing


def test_behind_https_the_cookie_is_secure_and_host_bound(settings: Settings) -> None:
    from litestar.datastructures import State

    from api.console.controllers import session_cookie

    plain = session_cookie(State({"settings": settings}), "keel_cs_x")
    secure = session_cookie(State({"settings": settings.with_(console_secure_cookie=True)}), "keel_cs_x")
    assert (plain.key, plain.secure) == ("keel_console", False)
    # `__Host-`: the browser keeps it only if Secure, Path=/ and no Domain, so no subdomain can set it.
    assert (secure.key, secure.secure, secure.path, secure.domain) == ("__Host-keel_console", True, "/", None)
    assert secure.httponly and secure.samesite == "strict"
    ended = session_cookie(State({"settings": settings}), "", end=True)
    assert ended.max_age == 0


def row_html(page: str, row_id: str) -> str:
    """The inside of the table row ``<tr id=row_id>``."""
    match = re.search(rf'<tr id="{re.escape(row_id)}">(.*?)</tr>', page, re.S)
    assert match, f"no row {row_id}"
    return match.group(1)


def row_text(page: str, row_id: str) -> str:
    """The row's text (tags dropped, entities decoded, spaces folded)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", row_html(page, row_id))).split())


def cell(page: str, row_id: str, css_class: str) -> str:
    match = re.search(rf'<tr id="{re.escape(row_id)}">.*?class="{css_class}">(.*?)</', page, re.S)
    assert match, f"no {css_class} in row {row_id}"
    return html.unescape(match.group(1)).strip()


def test_the_org_page_shows_audit_streams_with_their_lag_status_and_last_error(
    admin: tuple[httpx.Client, str, str], client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    session, _, _ = admin
    path = f"/v1/orgs/{org.id}/audit-streams"
    assert "No audit streams." in session.get(f"/console/orgs/{org.id}").text
    made = {}
    for name, fmt in (("siem", "ocsf"), ("archive", "keel")):
        response = client.post(path, headers=org.headers("owner"), json={
            "name": name, "type": "splunk_hec", "format": fmt, "token": "hec-token-1",
            "url": f"https://splunk.example.com:8088/services/collector?channel={name}-secret"})  # fmt: skip
        assert response.status_code == 201, response.text
        made[name] = response.json()
    with engine.begin() as conn:
        head = conn.execute(
            text("SELECT max(seq) FROM audit_log WHERE chain_key = :k"), {"k": org.id}
        ).scalar_one()
        # "archive" caught up, then disabled after its destination refused the token.
        conn.execute(
            text(
                "UPDATE audit_streams SET delivered_seq = :h, status = 'disabled', disabled_at = now(),"
                " disabled_reason = 'the destination answered 403 for 5 days', last_error = 'HTTP 403',"
                " last_error_at = now(), last_success_at = now() - interval '5 days' WHERE id = :s"
            ),
            {"h": head, "s": made["archive"]["id"]},
        )
    page = session.get(f"/console/orgs/{org.id}").text
    assert 'id="h-streams">Audit streams</h2>' in page
    # The page's own read is audited first (staff.org_viewed): one more entry to stream.
    listed = {s["name"]: s for s in client.get(path, headers=org.headers("owner")).json()["items"]}
    assert audit_rows(engine, organization_id=org.id, action="staff.org_viewed")

    siem, archive = f"stream-{made['siem']['id']}", f"stream-{made['archive']['id']}"
    # The lag is the API's: every entry of the chain, none delivered yet (no worker runs here).
    assert int(cell(page, siem, "stream-lag-entries")) == listed["siem"]["lag_entries"] == head + 1
    assert float(cell(page, siem, "stream-lag-seconds")) >= 0
    assert cell(page, siem, "stream-status") == "active"
    assert cell(page, siem, "stream-last-error") == "—"
    shown = row_text(page, siem)
    assert shown.startswith("siem splunk_hec ocsf https://splunk.example.com:8088/services/collector active")
    assert "secret" not in shown  # the URL is cut before its query, as audit entries show it
    # "archive" has everything but the staff view's own entry.
    assert int(cell(page, archive, "stream-lag-entries")) == listed["archive"]["lag_entries"] == 1
    assert cell(page, archive, "stream-disabled-reason") == "the destination answered 403 for 5 days"
    assert "disabled: the destination answered 403 for 5 days" in row_text(page, archive)
    assert "HTTP 403" in cell(page, archive, "stream-last-error")


def test_the_flags_panel_says_which_rule_segment_and_constraint_turned_a_flag_on(
    admin: tuple[httpx.Client, str, str], client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    session, _, token = admin
    plan = unique("plan")
    seed_mirror(engine, org.id, plan=plan)
    segment = unique("fintech")
    made = client.post("/v1/admin/segments", headers=auth(token), json={
        "name": segment, "description": "Fintech", "constraints": [
            {"field": "org.traits.industry", "operator": "IN", "values": ["fintech"]}]})  # fmt: skip
    assert made.status_code == 201, made.text
    by_plan = create_flag(client, token, rollout_percentage=0, rules=[
        {"name": "on-their-plan", "constraints": [{"field": "org.plan", "operator": "IN", "values": [plan]}]}])  # fmt: skip
    by_trait = create_flag(client, token, rollout_percentage=0, rules=[
        {"name": "enterprise-only", "constraints": [
            {"field": "org.plan", "operator": "IN", "values": ["enterprise_monthly"]}]},
        {"name": "fintechs", "segments": [segment]}])  # fmt: skip
    plain = create_flag(client, token, rollout_percentage=0)

    before = session.get(f"/console/orgs/{org.id}").text
    trait_row = row_text(before, f"flag-{by_trait['key']}")
    assert trait_row.startswith(f"{by_trait['key']} off ")
    assert "rule 'fintechs' did not apply: org.traits.industry IN [fintech]" in trait_row

    group_call(client, org, {"industry": "fintech"})
    page = session.get(f"/console/orgs/{org.id}").text
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=auth(token)).json()
    explained = {f["key"]: f["explanation"] for f in view["flags"]}

    plan_row = row_text(page, f"flag-{by_plan['key']}")
    assert plan_row.startswith(f"{by_plan['key']} on ")
    assert cell(page, f"flag-{by_plan['key']}", "flag-explanation") == explained[by_plan["key"]]
    assert "on: rule 'on-their-plan' matched" in plan_row
    assert cell(page, f"flag-{by_plan['key']}", "flag-rule-name") == "on-their-plan"
    assert cell(page, f"flag-{by_plan['key']}", "flag-constraint") == f"org.plan IN [{plan}]"

    trait_id = f"flag-{by_trait['key']}"
    assert row_text(page, trait_id).startswith(f"{by_trait['key']} on ")
    assert cell(page, trait_id, "flag-explanation") == explained[by_trait["key"]]
    assert cell(page, trait_id, "flag-rule-name") == "fintechs"
    assert cell(page, trait_id, "flag-segment") == segment
    assert (
        cell(page, trait_id, "flag-constraint") == f"org.traits.industry IN [fintech] (segment {segment!r})"
    )

    # A flag with no rules: its bucket against the rollout, and no rule listed.
    plain_row = row_text(page, f"flag-{plain['key']}")
    assert plain_row.startswith(f"{plain['key']} off off: bucket ") and "> rollout 0" in plain_row
    assert 'class="flag-rule-name"' not in row_html(page, f"flag-{plain['key']}")


def test_the_org_page_shows_ingestion_warnings_and_the_orgs_external_id_and_traits(
    admin: tuple[httpx.Client, str, str], client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    from tests.test_segment import basic, segment_call

    session, _, _ = admin
    page = session.get(f"/console/orgs/{org.id}").text
    assert 'id="h-warnings">Ingestion warnings</h2>' in page and "No ingestion warnings." in page
    external = f"acct-{org.slug}"
    assert (
        client.patch(
            f"/v1/orgs/{org.id}", json={"external_id": external}, headers=org.headers("owner")
        ).status_code
        == 200
    )
    group_call(client, org, {"plan": "enterprise", "employees": 40})
    invalid = segment_call(userId={"not": "an id"})  # a field of the wrong type
    ghost = segment_call(context={"groupId": f"acct-ghost-{uuid.uuid4().hex[:6]}"})  # names no org
    answer = client.post("/segment/v1/batch", json={"batch": [invalid, ghost]}, headers=basic(org.ingest_key))
    assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text
    with engine.connect() as conn:
        warnings = [
            dict(r._mapping)
            for r in conn.execute(
                text("SELECT * FROM ingestion_warnings WHERE organization_id = :o ORDER BY id DESC"),
                {"o": org.id},
            )
        ]
    listed = client.get(f"/v1/orgs/{org.id}/ingestion-warnings", headers=org.headers("owner")).json()
    assert [w["id"] for w in listed["items"]] == [str(w["id"]) for w in warnings]
    # The unresolvable group (a warning with the message's id) and the invalid field (its message
    # could not be read, so no id): both in this org, since its key sent them.
    assert {w["reason"]: w["message_id"] for w in warnings} == {
        "unknown_org": ghost["messageId"],
        "invalid_field": None,
    }

    page = session.get(f"/console/orgs/{org.id}").text
    assert "No ingestion warnings." not in page
    assert page.index('id="h-warnings"') < page.index('id="ingestion-warnings"')
    shown = re.findall(r'<tr id="warning-([0-9a-f-]+)">', page)
    assert shown == [str(w["id"]) for w in warnings]  # newest first, as the API lists them
    for w in warnings:
        row = f"warning-{w['id']}"
        assert cell(page, row, "warning-reason") == w["reason"]
        assert int(cell(page, row, "warning-count")) == w["count"]
        assert cell(page, row, "warning-error") == w["error"]
        assert (w["message_id"] or "—") in row_text(page, row)
    lost = next(w for w in warnings if w["reason"] == "unknown_org")
    assert ghost["context"]["groupId"] in row_text(page, f"warning-{lost['id']}")  # its sample
    # The overview: the external id and the latest traits (from the group call).
    overview = re.search(r'<section id="overview".*?</section>', page, re.S)
    assert overview
    facts = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", overview.group(0))).split())
    assert f"External id {external}" in facts
    assert 'Traits employees 40 plan "enterprise"' in facts
