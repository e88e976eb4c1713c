"""Helpers for the console's tests: sign-in links and sessions made through the real services, and
a way to run asyncio work while Playwright's sync API holds this thread's event loop."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from api.console.sessions import create_link
from api.db.engine import run_in_session
from api.settings import Settings

T = TypeVar("T")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def in_thread(work: Callable[[], T]) -> T:
    """Run blocking work that starts its own event loop in another thread (Playwright's sync API
    keeps one running in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    return in_thread(lambda: asyncio.run(make()))  # type: ignore[arg-type]


def sign_in_secret(settings: Settings, email: str) -> str:
    """The secret of a new one-time sign-in link for ``email`` (what ``keel console login`` prints)."""
    assert settings.database_url

    async def work(session: Any) -> str:
        secret, _ = await create_link(session, email=email, settings=settings)
        return secret

    return in_thread(lambda: run_in_session(settings.database_url or "", work))


def email_of(client: httpx.Client, token: str) -> str:
    response = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return str(response.json()["email"])


def console_session(base_url: str, settings: Settings, email: str) -> tuple[httpx.Client, str]:
    """An HTTP client signed in to the console by link, and a CSRF token of its session."""
    client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
    signed = client.get(f"/console/login/{sign_in_secret(settings, email)}")
    assert signed.status_code == 200, signed.text
    page = client.get("/console", headers={"accept": "text/html"})
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match, "the console page carries no CSRF token"
    return client, match.group(1)
