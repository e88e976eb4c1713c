"""Limits on abuse: rate limits (429 with Retry-After and RateLimit fields) and slow clients cut off.

A server of this module's own runs with small limits and one-second read deadlines, configured as
``keel serve`` is (``LiveServer`` uses ``api.server.server_config``); each test spends the budget of
its own keys and addresses. Client addresses are told apart the way a proxy tells them: an
``X-Forwarded-For`` from 127.0.0.1, which uvicorn trusts by default.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from api.app import create_app
from api.settings import Settings, SettingsError, load_settings
from tests.harness import LiveServer, auth, free_port, make_org, make_user

FAILED_AUTH = 60  # a minute: one attempt back each second
INGEST_REQUESTS = 20
INGEST_EVENTS = 5_000  # the smallest allowed: one full batch
WRITES = 10
DEADLINE = 1.0  # seconds, for headers and for bodies
KEEL = str(Path(sys.executable).with_name("keel"))


@pytest.fixture(scope="module")
def limited(settings: Settings) -> Iterator[LiveServer]:
    small = settings.with_(
        rate_limit_failed_auth=FAILED_AUTH,
        rate_limit_ingest_requests=INGEST_REQUESTS,
        rate_limit_ingest_events=INGEST_EVENTS,
        rate_limit_writes=WRITES,
        header_timeout=DEADLINE,
        body_timeout=DEADLINE,
    )
    with LiveServer(create_app(small)) as server:
        yield server


@pytest.fixture
def api(limited: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        yield client


def address() -> dict[str, str]:
    """A client address of the test's own (in 198.18.0.0/15, the benchmarking range, used nowhere else)."""
    n = uuid.uuid4().int
    return {"X-Forwarded-For": f"198.{18 + n % 2}.{n // 2 % 256}.{n // 512 % 256}"}


def policy(response: httpx.Response, name: str) -> dict[str, int]:
    """The named member of the answer's ``RateLimit`` field: {"r": remaining, "t": seconds to full}."""
    for member in ", ".join(response.headers.get_list("ratelimit")).split(", "):
        label, *params = member.split(";")
        if label == f'"{name}"':
            return {k: int(v) for k, v in (p.split("=") for p in params)}
    raise AssertionError(f"no {name} in RateLimit: {response.headers.get_list('ratelimit')}")


def assert_refused(response: httpx.Response, name: str, at_most: int, cost: int = 1) -> None:
    """429, problem+json, fewer units left than the request's ``cost``, and a Retry-After of
    1..``at_most`` seconds (what the missing units take to refill)."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 429
    assert 1 <= int(response.headers["retry-after"]) <= at_most, response.headers["retry-after"]
    assert policy(response, name)["r"] < cost


def events_of(engine: Engine, org_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM events WHERE organization_id = :o"), {"o": org_id}
        ).scalar_one()


# -- rate limits


def spend_until_refused(
    send: Callable[[int], httpx.Response], quota: int, name: str
) -> tuple[int, httpx.Response]:
    """Call ``send(n)`` until it is refused; every answer before is a success carrying the policy.
    Returns (accepted, the refusal). The budget refills while this runs (quota a minute), so a slow
    machine may be granted a few more than ``quota``, never fewer."""
    started = time.monotonic()
    for n in range(2 * quota):
        response = send(n)
        if response.status_code == 429:
            refill = (time.monotonic() - started) * quota / 60
            assert quota <= n <= quota + refill + 1, (n, quota, refill)
            return n, response
        assert response.status_code < 500 and response.status_code != 429, response.text
        assert f'"{name}";q={quota};w=60' in response.headers.get_list("ratelimit-policy")
        if n == 0:
            assert policy(response, name)["r"] == quota - 1
    raise AssertionError(f"{2 * quota} requests and no 429")


def test_failed_authentication_is_limited_per_client_address(api: httpx.Client, engine: Engine) -> None:
    here, elsewhere = address(), address()
    bad = {**here, **auth("keel_ut_" + "x" * 40)}

    def attempt(n: int) -> httpx.Response:
        response = api.get("/v1/me", headers=bad)
        assert response.status_code in {401, 429}, response.text
        return response

    spend_until_refused(attempt, FAILED_AUTH, "failed-auth")
    # Out of attempts: refused before any lookup, a valid token too (unless the process already knows it).
    assert_refused(api.get("/v1/me", headers=bad), "failed-auth", at_most=1)
    assert_refused(api.get("/v1/me", headers=here), "failed-auth", at_most=1)  # no token at all
    _, fresh_token = make_user(engine)
    assert_refused(api.get("/v1/me", headers={**here, **auth(fresh_token)}), "failed-auth", at_most=1)
    empty = time.monotonic()  # no unit left here
    # Another address has its own budget.
    assert api.get("/v1/me", headers={**elsewhere, **auth("keel_ut_" + "y" * 40)}).status_code == 401
    assert api.get("/v1/me", headers={**elsewhere, **auth(fresh_token)}).status_code == 200
    # Retry-After is honest: one attempt a second comes back (more if this machine was slow since).
    time.sleep(1.05)
    answers = [api.get("/v1/me", headers=bad)]
    while answers[-1].status_code == 401 and len(answers) <= FAILED_AUTH:
        answers.append(api.get("/v1/me", headers=bad))
    *granted, refused = answers
    assert all(r.status_code == 401 for r in granted)
    assert_refused(refused, "failed-auth", at_most=1)
    back = len(granted)
    assert 1 <= back <= (time.monotonic() - empty) * FAILED_AUTH / 60 + 1, back


def test_ingest_requests_are_limited_per_key(api: httpx.Client, engine: Engine) -> None:
    org, other = make_org(api, engine, roles=("owner",)), make_org(api, engine, roles=("owner",))
    key = auth(org.ingest_key)

    def event(n: int) -> httpx.Response:
        return api.post("/v1/events", json={"event": "e", "user_id": "u", "message_id": f"m{n}"}, headers=key)

    accepted, refused = spend_until_refused(event, INGEST_REQUESTS, "ingest-requests")
    assert_refused(refused, "ingest-requests", at_most=3)  # 60 s / 20 requests
    assert "ingest key" in refused.json()["detail"]
    # Every route the key calls spends the same budget; another key has its own.
    assert_refused(api.get("/v1/flags/evaluate", headers=key), "ingest-requests", at_most=3)
    assert (
        api.post(
            "/v1/events", json={"event": "e", "user_id": "u"}, headers=auth(other.ingest_key)
        ).status_code
        == 200
    )
    assert events_of(engine, org.id) == accepted


def test_ingest_events_are_limited_per_key(api: httpx.Client, engine: Engine) -> None:
    org = make_org(api, engine, roles=("owner",))
    key = auth(org.ingest_key)

    def batch(n: int, tag: str) -> dict[str, list[dict[str, str]]]:
        return {"events": [{"event": "e", "user_id": "u", "message_id": f"{tag}-{i}"} for i in range(n)]}

    full = api.post("/v1/events/batch", json=batch(INGEST_EVENTS, "full"), headers=key)
    assert full.status_code == 200, full.text
    assert full.json()["accepted"] == INGEST_EVENTS
    assert '"ingest-events";q=5000;w=60' in full.headers.get_list("ratelimit-policy")
    assert policy(full, "ingest-events")["r"] == 0
    # The next batch is refused whole, nothing of it stored; Retry-After says when it fits.
    over = api.post("/v1/events/batch", json=batch(500, "over"), headers=key)
    assert_refused(over, "ingest-events", at_most=6, cost=500)  # 500 events at 5,000 a minute
    assert events_of(engine, org.id) == INGEST_EVENTS
    time.sleep(int(over.headers["retry-after"]))
    again = api.post("/v1/events/batch", json=batch(500, "over"), headers=key)
    assert again.status_code == 200, again.text
    assert events_of(engine, org.id) == INGEST_EVENTS + 500


def test_writes_are_limited_per_user_token(api: httpx.Client, engine: Engine) -> None:
    (_, token), (_, other) = make_user(engine), make_user(engine)

    def write(n: int) -> httpx.Response:
        return api.post("/v1/me/tokens", json={"name": f"t{n}"}, headers=auth(token))

    accepted, refused = spend_until_refused(write, WRITES, "writes")
    assert_refused(refused, "writes", at_most=6)  # 60 s / 10 writes
    # Reads are not writes; the refused write made nothing; another token has its own budget.
    mine = api.get("/v1/me/tokens", headers=auth(token))
    assert mine.status_code == 200
    assert "ratelimit" not in mine.headers
    assert len(mine.json()["items"]) == 1 + accepted
    assert api.post("/v1/me/tokens", json={"name": "x"}, headers=auth(other)).status_code == 201


def test_limits_are_read_from_keel_settings() -> None:
    env = {
        "KEEL_RATE_LIMIT_FAILED_AUTH_PER_MINUTE": "7",
        "KEEL_RATE_LIMIT_INGEST_REQUESTS_PER_MINUTE": "0",
        "KEEL_RATE_LIMIT_INGEST_EVENTS_PER_MINUTE": "20000",
        "KEEL_RATE_LIMIT_WRITES_PER_MINUTE": "9",
        "KEEL_HEADER_TIMEOUT": "2.5",
        "KEEL_BODY_TIMEOUT": "4",
    }
    loaded = load_settings(env, env_file=None)
    assert (loaded.rate_limit_failed_auth, loaded.rate_limit_ingest_requests) == (7, 0)
    assert (loaded.rate_limit_ingest_events, loaded.rate_limit_writes) == (20_000, 9)
    assert (loaded.header_timeout, loaded.body_timeout) == (2.5, 4.0)
    defaults = load_settings({}, env_file=None)
    assert (defaults.rate_limit_failed_auth, defaults.rate_limit_ingest_requests) == (300, 60_000)
    assert (defaults.rate_limit_ingest_events, defaults.rate_limit_writes) == (1_000_000, 3_000)
    assert (defaults.header_timeout, defaults.body_timeout) == (10.0, 30.0)
    with pytest.raises(SettingsError, match="KEEL_RATE_LIMIT_WRITES_PER_MINUTE"):
        load_settings({"KEEL_RATE_LIMIT_WRITES_PER_MINUTE": "-1"}, env_file=None)
    with pytest.raises(SettingsError, match="KEEL_BODY_TIMEOUT"):
        load_settings({"KEEL_BODY_TIMEOUT": "0"}, env_file=None)
    with pytest.raises(SettingsError, match="one full batch"):
        create_app(Settings(database_url="postgresql://unused@/unused", rate_limit_ingest_events=100))


# -- slow clients


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def drip_until_answered(sock: socket.socket, drops: list[bytes], every: float = 0.2) -> tuple[bytes, float]:
    """Send one drop every ``every`` seconds until the server answers or closes; returns (all the
    server sent until it closed, seconds from the first drop to the close)."""
    started = time.monotonic()
    sock.settimeout(every)
    received = b""
    for drop in drops:
        try:
            sock.sendall(drop)
        except OSError:  # closed by the server
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        received += chunk
        if not chunk:
            break
    sock.settimeout(5)
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def problem_of(answer: bytes) -> tuple[str, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, json.loads(body)


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="keel.access")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, request_id: str, timeout: float = 5) -> list[logging.LogRecord]:
    """The access-log lines of one request, once the server has written them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == request_id]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no log line for request {request_id}")


def test_a_client_dripping_headers_is_cut_off(
    limited: LiveServer, access_log: pytest.LogCaptureFixture
) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET /v1/me HTTP/1.1\r\nHost: keel\r\n")
        answer, elapsed = drip_until_answered(sock, [b"X-Drip: %d\r\n" % i for i in range(50)])
    status, headers, problem = problem_of(answer)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert problem["detail"] == "the request headers did not arrive within 1 s"
    assert DEADLINE - 0.3 < elapsed < DEADLINE + 2, elapsed
    assert any(r.getMessage() == "request headers timed out" for r in access_log.records)


def test_an_idle_connection_is_closed_without_an_answer(limited: LiveServer) -> None:
    with connect(limited) as sock:
        started = time.monotonic()
        assert sock.recv(65536) == b""
        assert time.monotonic() - started < DEADLINE + 2


def test_a_client_dripping_a_body_is_cut_off(
    limited: LiveServer, api: httpx.Client, engine: Engine, access_log: pytest.LogCaptureFixture
) -> None:
    org = make_org(api, engine, roles=("owner",))
    body = json.dumps({"event": "slow", "user_id": "u", "message_id": "slow-1"}).encode()
    request_id = f"slow-body-{uuid.uuid4().hex[:8]}"
    with connect(limited) as sock:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nX-Request-ID: %s\r\nContent-Length: %d\r\n\r\n"
            % (org.ingest_key.encode(), request_id.encode(), len(body))
        )
        answer, elapsed = drip_until_answered(sock, [body[i : i + 1] for i in range(len(body) - 1)])
    status, headers, problem = problem_of(answer)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["x-request-id"] == request_id
    assert problem["detail"] == "the request body did not arrive within 1 s"
    assert problem["request_id"] == request_id
    assert DEADLINE - 0.3 < elapsed < DEADLINE + 2, elapsed
    (line,) = logged(access_log, request_id)
    assert line.getMessage() == "request body timed out"
    assert line.fields["status"] == 408  # type: ignore[attr-defined]
    assert events_of(engine, org.id) == 0


def test_a_client_gone_mid_body_is_logged_as_a_disconnect(
    limited: LiveServer, api: httpx.Client, engine: Engine, access_log: pytest.LogCaptureFixture
) -> None:
    org = make_org(api, engine, roles=("owner",))
    request_id = f"gone-{uuid.uuid4().hex[:8]}"
    with connect(limited) as sock:
        sock.sendall(
            b"POST /v1/events/batch HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nX-Request-ID: %s\r\nContent-Length: 100000\r\n\r\n"
            b'{"events": [{"event": "e", "user_id": "u"},' % (org.ingest_key.encode(), request_id.encode())
        )
        time.sleep(0.2)
    (line,) = logged(access_log, request_id)
    assert line.getMessage() == "client disconnected"
    assert line.fields["status"] == 499  # type: ignore[attr-defined]
    assert line.fields["duration_ms"] < 1000 * DEADLINE  # type: ignore[attr-defined]
    assert not [r for r in access_log.records if r.levelno >= logging.ERROR]
    assert events_of(engine, org.id) == 0


def test_keel_serve_workers_cut_off_dripping_headers(database_url: str, tmp_path: Path) -> None:
    """The deadlines reach the worker processes of ``keel serve --workers`` (their own uvicorn)."""
    port = free_port()
    env = {**os.environ, "KEEL_DATABASE_URL": database_url, "KEEL_DATA_DIR": str(tmp_path),
           "KEEL_LOG_LEVEL": "WARNING", "KEEL_HEADER_TIMEOUT": "1"}  # fmt: skip
    proc = subprocess.Popen([KEEL, "serve", "--port", str(port), "--workers", "2"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "keel serve did not start"
            time.sleep(0.2)
        for _ in range(2):  # both workers, most likely
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: keel\r\n")
                answer, elapsed = drip_until_answered(sock, [b"X-Drip: %d\r\n" % i for i in range(50)])
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert elapsed < 3, elapsed
    finally:
        proc.terminate()
        proc.wait(30)
