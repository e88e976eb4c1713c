"""The official browser SDKs, unmodified, in Debian's Chromium (Playwright), calling Keel cross-origin
with a publishable key: Segment's ``@segment/analytics-next`` and OpenFeature's ``@openfeature/web-sdk``
on ``@openfeature/ofrep-web-provider``.

The page comes from one loopback port and the API answers on another, so the browser sends its
preflights and enforces the CORS answers. The SDKs are bundled from npm (``tests/node/``, esbuild)
and served beside the page: Segment's CDN is not reachable, so the page gives analytics.js its
settings itself (``cdnSettings``), as a self-hosted setup does. Configured exactly as docs/api.md and
docs/flags.md show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.browser_support import chromium, serve_site
from tests.harness import LiveServer, OrgWorld, auth, make_publishable_key
from tests.node_clients import build_browser_bundle
from tests.test_flags import create_flag, eventually
from tests.test_ofrep import in_cache

pytestmark = pytest.mark.e2e

PAGE = (
    b"<!doctype html><html lang='en'><head><title>Acme</title><link rel='icon' href='data:,'>"
    b"<script src='/keel-clients.js'></script></head><body>Acme web app</body></html>"
)

#: analytics.js loaded as docs/api.md shows, then the six calls, each awaited (it resolves once its
#: delivery to the Segment.io destination is done, or has failed).
SEGMENT_SCRIPT = """
async ({api, key, group, strategy, platform}) => {
  const {AnalyticsBrowser} = window.KeelClients;
  const apiHost = api.replace(/^https?:\\/\\//, '') + '/segment/v1';   // host:port/segment/v1
  const protocol = api.startsWith('https') ? 'https' : 'http';
  const segment = {apiKey: key, apiHost, protocol};
  if (strategy === 'batching') segment.deliveryStrategy = {strategy: 'batching', config: {size: 6, timeout: 500}};
  const errors = [];
  const analytics = AnalyticsBrowser.load(
    // flushTimer: analytics.js posts its own metrics to <apiHost>/m every 30 s; sooner here.
    {writeKey: key, cdnSettings: {integrations: {'Segment.io': segment}, metrics: {flushTimer: 200}}},
    {integrations: {'Segment.io': segment}},
  );
  analytics.on('error', (error) => errors.push(String(error?.reason ?? error?.code ?? error)));
  if (platform) {
    // A platform-wide key: every call names its org in context.groupId (docs/api.md).
    analytics.addSourceMiddleware(({payload, next}) => {
      payload.obj.context = {...payload.obj.context, groupId: group};
      next(payload);
    });
  }
  const calls = [
    ['identify', () => analytics.identify('ada', {email: 'ada@acme.example', role: 'admin'})],
    ['group', () => analytics.group(group, {plan: 'enterprise', employees: 120})],
    ['track', () => analytics.track('Report Exported', {format: 'pdf'})],
    ['page', () => analytics.page('Docs', 'Install', {path: '/docs/install'})],
    ['screen', () => analytics.screen('Settings', 'Billing', {tab: 2})],
    ['alias', () => analytics.alias('ada', 'anon-ada')],
  ];
  const sent = {};
  const failed = {};
  const pending = [];
  for (const [kind, call] of calls) {
    // One at a time (identify before alias, as a page's code runs); the batching strategy holds
    // each call until its batch goes, so there they are awaited together.
    const delivered = call().then((ctx) => {
      sent[kind] = ctx.event.messageId;
      const failure = ctx.failedDelivery();
      if (failure) failed[kind] = String(failure.reason);
    });
    if (strategy === 'batching') pending.push(delivered); else await delivered;
  }
  await Promise.all(pending);
  return {sent, failed, errors};
}
"""

#: Run before the page's own scripts: the page's fetch, observed (each answer's path and status, or
#: the error that hid it, and the If-None-Match it was asked with); what the SDKs send is left as
#: they send it.
WATCH_FETCH = """
window.answers = [];
const pageFetch = window.fetch;
window.fetch = async (input, init) => {
  const request = input instanceof Request ? input : new Request(input, init);
  const seen = {path: new URL(request.url).pathname, ifNoneMatch: request.headers.get('If-None-Match')};
  try {
    const response = await pageFetch(input, init);
    window.answers.push({...seen, status: response.status});
    return response;
  } catch (error) {
    window.answers.push({...seen, status: String(error)});
    throw error;
  }
};
"""


def answers(page: Any, path: str) -> list[dict[str, Any]]:
    """What the page's fetches to ``path`` were answered, in order."""
    seen: list[dict[str, Any]] = page.evaluate("(path) => window.answers.filter(a => a.path === path)", path)
    return seen


#: OpenFeature's web SDK on the OFREP web provider, as docs/flags.md shows; kept on the window so
#: the test can ask it again after a change.
OPENFEATURE_SCRIPT = """
async ({api, key, flag, pollInterval}) => {
  const {OpenFeature, OFREPWebProvider} = window.KeelClients;
  const provider = new OFREPWebProvider({
    baseUrl: api,
    headers: [['Authorization', 'Bearer ' + key]],
    pollInterval,
  });
  await OpenFeature.setContext({targetingKey: 'end-user-1', country: 'NO'});
  await OpenFeature.setProviderAndWait(provider);
  window.flags = OpenFeature.getClient();
  const details = window.flags.getBooleanDetails(flag, false);
  return {value: details.value, reason: details.reason, variant: details.variant ?? null,
          errorCode: details.errorCode ?? null};
}
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The browser SDKs bundled from tests/node/ (once for this module)."""
    return build_browser_bundle(tmp_path_factory.mktemp("bundle") / "keel-clients.js").read_bytes()


@pytest.fixture
def web_app(bundle: bytes) -> Iterator[str]:
    """The vendor's web app: the page and the SDK bundle, on a loopback port of their own."""
    files = {"/": ("text/html; charset=utf-8", PAGE), "/keel-clients.js": ("text/javascript", bundle)}
    with serve_site(files) as origin:
        yield origin


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def eventually_on(page: Any, check: Callable[[], bool], *, what: str, within: float = 15) -> None:
    """Poll ``check`` while the page runs (Playwright's sync API delivers the page's events only
    while it is called, so the wait is the page's own); fail if it still does not hold at the deadline."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        page.wait_for_timeout(50)


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


@pytest.mark.parametrize(
    ("strategy", "kind"), [("standard", "org"), ("batching", "org"), ("standard", "platform")]
)
def test_analytics_next_sends_every_call_cross_origin_with_a_publishable_key(
    browser: Any,
    web_app: str,
    live_server: LiveServer,
    client: httpx.Client,
    engine: Engine,
    org: OrgWorld,
    staff_admin: tuple[str, str],
    strategy: str,
    kind: str,
) -> None:
    external = f"acct-{org.slug}"
    patched = client.patch(f"/v1/orgs/{org.id}", json={"external_id": external}, headers=org.headers("owner"))
    assert patched.status_code == 200, patched.text
    if kind == "org":
        key, _ = make_publishable_key(client, org, origins=[web_app])
    else:  # one key for the whole product: each call names its org by external_id
        made = client.post(
            "/v1/admin/ingest-keys",
            json={"name": "web", "publishable": True, "allowed_origins": [web_app]},
            headers=auth(staff_admin[1]),
        )
        assert made.status_code == 201, made.text
        key = made.json()["token"]
    context = browser.new_context()
    try:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.add_init_script(WATCH_FETCH)
        page.goto(web_app)
        at = datetime.now(UTC)
        result = page.evaluate(
            SEGMENT_SCRIPT,
            {
                "api": live_server.url,
                "key": key,
                "group": external,
                "strategy": strategy,
                "platform": kind == "platform",
            },
        )
        # analytics.js's telemetry of the six calls: Keel answers it (and keeps nothing), so the
        # vendor's pages log no failed request.
        eventually_on(
            page, lambda: bool(answers(page, "/segment/v1/m")), what="analytics.js posts its metrics"
        )
        metrics = answers(page, "/segment/v1/m")
        assert {a["status"] for a in metrics} == {200}, (metrics, console)
        assert not [line for line in console if line.startswith("error")], console
    finally:
        context.close()

    assert result["failed"] == {} and result["errors"] == [], (result, console)
    sent: dict[str, str] = result["sent"]
    assert sorted(sent) == ["alias", "group", "identify", "page", "screen", "track"]
    # With batching, analytics.js resolves only the call that fills the batch after its POST (the
    # others as soon as they are queued): wait for the rows, then check there are exactly six.
    query = "SELECT * FROM events WHERE organization_id = :o"
    eventually(lambda: len(rows(engine, query, o=org.id)) >= 6, what="six events land", within=15)
    stored = rows(engine, query, o=org.id)
    by_id = {row["message_id"]: row for row in stored}
    assert sorted(by_id) == sorted(sent.values()) and len(stored) == 6  # each call once
    names = {call: by_id[mid]["event"] for call, mid in sent.items()}
    assert names == {"identify": "$identify", "group": "$group", "track": "Report Exported",
                     "page": "$page", "screen": "$screen", "alias": "$alias"}  # fmt: skip
    assert by_id[sent["track"]]["properties"] == {"format": "pdf"}
    page_properties = by_id[sent["page"]]["properties"]
    assert (page_properties["name"], page_properties["category"], page_properties["path"]) == (
        "Install",
        "Docs",
        "/docs/install",
    )
    assert by_id[sent["alias"]]["properties"] == {"previous_id": "anon-ada"}
    for row in stored:
        assert row["user_id"] == "ada" and row["anonymous_id"]  # analytics.js's own anonymous id
        assert row["context"]["library"]["name"] == "analytics.js"
        assert abs(row["timestamp"] - at) < timedelta(seconds=60)
    (person,) = rows(engine, "SELECT * FROM people WHERE organization_id = :o", o=org.id)
    assert person["user_id"] == "ada" and person["traits"] == {"email": "ada@acme.example", "role": "admin"}
    (traits,) = rows(engine, "SELECT traits FROM organizations WHERE id = :o", o=org.id)
    assert traits["traits"] == {"plan": "enterprise", "employees": 120}
    (alias,) = rows(engine, "SELECT * FROM identity_aliases WHERE organization_id = :o", o=org.id)
    assert (alias["previous_id"], alias["user_id"]) == ("anon-ada", "ada")


def test_openfeature_web_provider_evaluates_cross_origin_and_revalidates_with_the_etag(
    browser: Any,
    web_app: str,
    live_server: LiveServer,
    client: httpx.Client,
    org: OrgWorld,
    staff_admin: tuple[str, str],
) -> None:
    admin = staff_admin[1]
    flag = create_flag(client, admin, rollout_percentage=100)["key"]
    in_cache(client, org, flag)
    key, _ = make_publishable_key(client, org, origins=[web_app])
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script(WATCH_FETCH)
        page.goto(web_app)
        first = page.evaluate(
            OPENFEATURE_SCRIPT, {"api": live_server.url, "key": key, "flag": flag, "pollInterval": 200}
        )
        assert first == {"value": True, "reason": "STATIC", "variant": "on", "errorCode": None}, first

        # The provider polls the bulk endpoint: with the ETag it read from the first answer (the
        # browser lets it read it only when the CORS answer exposes it), answered 304.
        def bulk() -> list[tuple[int | str, str | None]]:
            return [(a["status"], a["ifNoneMatch"]) for a in answers(page, "/ofrep/v1/evaluate/flags")]

        eventually_on(page, lambda: any(status == 304 for status, _ in bulk()), what="a 304 to a poll")
        polls = bulk()
        assert polls[0] == (200, None), polls
        assert all(match for status, match in polls if status == 304), polls
        # A change reaches the page on the next poll.
        patched = client.patch(f"/v1/admin/flags/{flag}", json={"enabled": False}, headers=auth(admin))
        assert patched.status_code == 200, patched.text
        eventually_on(
            page,
            lambda: (
                page.evaluate("(flag) => window.flags.getBooleanDetails(flag, true).reason", flag)
                == "DISABLED"
            ),
            what="the kill switch reaches the page",
        )
        assert page.evaluate("(flag) => window.flags.getBooleanValue(flag, true)", flag) is False
    finally:
        context.close()


def test_openfeature_web_provider_from_an_origin_the_key_does_not_allow_gets_no_flags(
    browser: Any,
    web_app: str,
    live_server: LiveServer,
    client: httpx.Client,
    org: OrgWorld,
    staff_admin: tuple[str, str],
) -> None:
    flag = create_flag(client, staff_admin[1], rollout_percentage=100)["key"]
    in_cache(client, org, flag)
    key, _ = make_publishable_key(client, org, origins=["https://app.acme.example"])
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(web_app)
        outcome = page.evaluate(
            "async (args) => { try { return await (" + OPENFEATURE_SCRIPT + ")(args); }"
            " catch (error) { return {thrown: String(error)}; } }",
            {"api": live_server.url, "key": key, "flag": flag, "pollInterval": 0},
        )
    finally:
        context.close()
    # The provider could not read the refused answer: the flag falls back to the default, never on.
    print("OUTCOME", outcome)
    assert outcome.get("value") is not True, outcome
