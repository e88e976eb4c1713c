"""The API docs UI works on a machine without internet: Chromium, with every request that is not to
the live server refused, renders the operations from files Keel serves itself."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Route, sync_playwright

from tests.harness import LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
def test_the_docs_ui_renders_its_operations_offline(
    browser: Browser, live_server: LiveServer, path: str
) -> None:
    requested: list[str] = []
    refused: list[str] = []

    def offline(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if url.startswith(live_server.url + "/"):
            route.continue_()
        else:
            refused.append(url)
            route.abort("internetdisconnected")

    context = browser.new_context()
    try:
        context.route("**/*", offline)
        page = context.new_page()
        page.goto(live_server.url + path)
        # Swagger UI built the page from the document: an operation's summary is on screen.
        document = httpx.get(live_server.url + "/schema/openapi.json").json()
        summary = page.get_by_text(document["paths"]["/v1/admin/orgs"]["get"]["summary"])
        summary.first.wait_for(state="visible", timeout=20_000)
        assert page.locator(".opblock").count() > 50
        assert page.get_by_text("Keel API").first.is_visible()
    finally:
        context.close()
    assert refused == [], f"the docs page reached outside Keel: {refused}"
    assert any(url.endswith("/schema/assets/swagger-ui-bundle.js") for url in requested), requested
    assert {urlsplit(url).hostname for url in requested} <= LOOPBACK


def test_the_docs_page_names_only_keels_own_assets(client: httpx.Client) -> None:
    page = client.get("/schema")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[0]
    bundle = client.get("/schema/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert "/schema/assets/{file_path:path}" not in client.get("/schema/openapi.json").json()["paths"]
