"""A web page calls Keel cross-origin with a publishable key, in Debian's Chromium (Playwright).

The page is served from one loopback port and the API from another, so every call is a real
cross-origin request: the browser sends its preflight and enforces the answers' CORS headers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.browser_support import chromium, serve_site
from tests.harness import LiveServer, OrgWorld, audit_rows, make_publishable_key

PAGE = b"<!doctype html><html lang='en'><head><title>Acme</title></head><body>Acme web app</body></html>"

#: What the page runs: Segment's batch call with the write key as Basic auth (what Segment's SDKs
#: send), a track call exactly as analytics.js sends it, Keel's own event route with
#: a Bearer key, an OpenFeature bulk evaluation, and an attempt at writing an audit entry.
SCRIPT = """
async ({api, key, ids}) => {
  const basic = 'Basic ' + btoa(key + ':');
  const bearer = 'Bearer ' + key;
  const answer = async (path, init) => {
    try {
      const response = await fetch(api + path, init);
      return {status: response.status, body: await response.text()};
    } catch (error) {
      return {blocked: String(error)};
    }
  };
  const now = new Date().toISOString();
  return {
    batch: await answer('/segment/v1/batch', {method: 'POST',
      headers: {'Authorization': basic, 'Content-Type': 'application/json'},
      body: JSON.stringify({sentAt: now, batch: [
        {type: 'track', event: 'Report Exported', userId: 'u-1', messageId: ids[0], timestamp: now},
        {type: 'page', name: 'Dashboard', anonymousId: 'anon-1', messageId: ids[1], timestamp: now},
      ]})}),
    // As analytics.js (@segment/analytics-next) sends a track call: to `<apiHost>/t`, text/plain,
    // the write key both as Basic auth and in the body, its attempt counter, its _metadata.
    beacon: await answer('/segment/v1/t', {method: 'POST',
      headers: {'Authorization': basic, 'Content-Type': 'text/plain', 'X-Retry-Count': '0'},
      body: JSON.stringify({type: 'track', event: 'Clicked', userId: 'u-1', anonymousId: 'anon-1',
        messageId: ids[2], writeKey: key, sentAt: now, timestamp: now,
        context: {library: {name: 'analytics.js', version: 'npm:next-1.70.0'}, page: {path: '/'}},
        _metadata: {bundled: ['Segment.io'], unbundled: [], bundledIds: []}})}),
    event: await answer('/v1/events', {method: 'POST',
      headers: {'Authorization': bearer, 'Content-Type': 'application/json'},
      body: JSON.stringify({event: 'report.shared', user_id: 'u-1', message_id: ids[3]})}),
    flags: await answer('/ofrep/v1/evaluate/flags', {method: 'POST',
      headers: {'Authorization': bearer, 'Content-Type': 'application/json'},
      body: JSON.stringify({context: {targetingKey: 'u-1'}})}),
    audit: await answer('/v1/audit-logs', {method: 'POST',
      headers: {'Authorization': bearer, 'Content-Type': 'application/json'},
      body: JSON.stringify({action: 'document.shared', actor: {type: 'user', id: 'u-1'}})}),
  };
}
"""


@pytest.fixture
def web_app() -> Iterator[str]:
    """The vendor's web app: a page on a loopback port of its own (chosen at run time)."""
    with serve_site({"/": ("text/html; charset=utf-8", PAGE)}) as origin:
        yield origin


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def run_page(browser: Any, page_url: str, api: str, key: str, ids: list[str]) -> dict[str, Any]:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(page_url)
        result: dict[str, Any] = page.evaluate(SCRIPT, {"api": api, "key": key, "ids": ids})
        return result
    finally:
        context.close()


def stored(engine: Engine, org_id: str, ids: list[str]) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT message_id, event FROM events WHERE organization_id = :o AND message_id = ANY(:m)"),
            {"o": org_id, "m": ids},
        ).all()
    return {row.message_id: row.event for row in rows}


def test_a_page_sends_events_cross_origin_with_a_publishable_key(
    browser: Any, web_app: str, live_server: LiveServer, client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    assert web_app != live_server.url  # two origins: every call below is cross-origin
    key, key_id = make_publishable_key(client, org, origins=[web_app])
    ids = [str(uuid.uuid4()) for _ in range(4)]
    audit_before = audit_rows(engine, organization_id=org.id)

    result = run_page(browser, web_app, live_server.url, key, ids)

    # A readable answer is the browser's own proof that the CORS answer named this page's origin.
    for call in ("batch", "beacon", "event", "flags"):
        assert result[call].get("status") == 200, (call, result[call])
    assert result["batch"]["body"] == '{"success":true}'
    landed = stored(engine, org.id, ids)
    assert landed == {ids[0]: "Report Exported", ids[1]: "$page", ids[2]: "Clicked", ids[3]: "report.shared"}
    # The audit route answers no CORS: the browser stops at the preflight, and nothing is written.
    assert "blocked" in result["audit"], result["audit"]
    assert audit_rows(engine, organization_id=org.id) == audit_before
    assert not audit_rows(engine, actor_id=key_id)


def test_a_page_on_an_origin_the_key_does_not_allow_writes_nothing(
    browser: Any, web_app: str, live_server: LiveServer, client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    key, _ = make_publishable_key(client, org, origins=["https://app.acme.example"])
    ids = [str(uuid.uuid4()) for _ in range(4)]

    result = run_page(browser, web_app, live_server.url, key, ids)

    # The preflight is answered (it carries no key), the request itself refused: a 403 the page
    # cannot read, so the browser reports it as a network error.
    for call in ("batch", "beacon", "event", "flags", "audit"):
        assert "blocked" in result[call], (call, result[call])
    assert stored(engine, org.id, ids) == {}
