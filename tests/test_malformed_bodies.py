"""Malformed bodies on every JSON route the app has: a precise 4xx problem, never a 5xx, nothing written.

The routes are enumerated from ``app.routes`` (every handler with a ``data`` body, or a raw body it
reads itself and documents in ``opt["request_body"]``), so a route added later is covered as it is.
Each is called with the first credential that gets past authentication to its body.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import Engine, text

from api.bodies import MAX_JSON_DEPTH, TEXT_PLAIN_JSON
from tests.harness import OrgWorld, auth

PARAM = re.compile(r"{(?P<name>\w+)(?::(?P<kind>\w+))?}")
#: Tables that record refusals by design: the Stripe receiver's requests, and ingestion warnings.
REFUSAL_LOGS = {"inbound_webhook_requests", "ingestion_warnings"}
#: An 18 KB body nested far past the limit (and past the decoder's own recursion limit).
DEEP = b"[" * 9000 + b"]" * 9000
WRONG_TYPES = (
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=keel",
    "application/xml",
    "application/json; charset=iso-8859-1",
)


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    raw_body: bool  # read by the handler itself (gzip allowed), not through Litestar's `data`
    text_plain: bool  # also reads text/plain as JSON (the ingest routes)


def json_routes(app: Litestar) -> list[Route]:
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            raw = "request_body" in handler.opt
            if not raw and "data" not in handler.parsed_fn_signature.parameters:
                continue
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append(Route(method, route.path, raw, bool(handler.opt.get(TEXT_PLAIN_JSON))))
    return found


def fill(template: str, org: OrgWorld) -> str:
    def value(match: re.Match[str]) -> str:
        name, kind = match.group("name"), match.group("kind")
        if name == "org_id":
            return org.id  # the caller's own organization: past the tenant guard
        if name == "user_id":
            return org.user_ids["member"]
        return str(uuid.uuid4()) if kind == "uuid" else "malformed-body-check"

    return PARAM.sub(value, template)


def row_counts(engine: Engine) -> dict[str, int]:
    """Every table's row count (partitioned tables counted once, through their parent)."""
    with engine.connect() as conn:
        tables = conn.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            )
        ).scalars()
        return {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables}


def inbound_outcomes(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT outcome, count(*) FROM inbound_webhook_requests GROUP BY outcome"))
        return {outcome: n for outcome, n in rows.all()}


def is_ofrep_error(response: httpx.Response) -> bool:
    """OFREP's routes answer a bad request in OFREP's own error shape (its clients read
    ``errorCode``), with the same precise words in ``errorDetails``."""
    if not response.request.url.path.startswith("/ofrep/") or response.status_code != 400:
        return False
    body = response.json()
    return body.get("errorCode") in {"PARSE_ERROR", "INVALID_CONTEXT", "TARGETING_KEY_MISSING"} and bool(
        body.get("errorDetails")
    )


def refused(response: httpx.Response) -> bool:
    """A 4xx problem, or (a batch) a 200 that stored nothing and named the rejected items."""
    if 400 <= response.status_code < 500:
        if is_ofrep_error(response):
            return True
        return response.headers["content-type"].startswith("application/problem+json") and bool(
            response.json()["detail"]
        )
    if response.status_code == 200:
        body = response.json()
        return body.get("accepted") == 0 and body.get("duplicates") == 0 and bool(body.get("rejected"))
    return False


class Caller:
    """Sends each request with a fresh request id, checks it was refused, and keeps the ids."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.ids = count()
        self.sent: list[str] = []

    def send(
        self, route: Route, url: str, headers: dict[str, str], body: bytes, **extra: str
    ) -> httpx.Response:
        request_id = f"malformed-{next(self.ids)}"
        headers = {"content-type": "application/json", **headers, **extra, "x-request-id": request_id}
        response = self.client.request(route.method, url, content=body, headers=headers)
        self.sent.append(request_id)
        assert refused(response), (
            f"{route.method} {route.template} {extra}: {response.status_code} {response.text}"
        )
        return response


@dataclass(frozen=True)
class Sender:
    """One route, called with the credential that reaches its body."""

    caller: Caller
    route: Route
    url: str
    headers: dict[str, str]

    def __call__(self, body: bytes, **extra: str) -> httpx.Response:
        return self.caller.send(self.route, self.url, self.headers, body, **extra)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO):
        yield caplog


def detail(response: httpx.Response) -> str:
    return str(response.json()["errorDetails" if is_ofrep_error(response) else "detail"])


def test_routes_are_enumerated(app: Litestar) -> None:
    found = {(r.method, r.template) for r in json_routes(app)}
    assert {("POST", "/v1/orgs"), ("POST", "/v1/events/batch"), ("POST", "/v1/webhooks/stripe")} <= found
    segment = {
        f"/segment/v1/{call}"
        for call in ("batch", "track", "identify", "group", "page", "screen", "alias", *"btigpsa", "m")
    }
    assert {r.template for r in json_routes(app) if r.text_plain} == {
        "/v1/events",
        "/v1/events/batch",
        *segment,
    }


def test_the_nesting_limit_is_documented() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    assert f"nest at most **{MAX_JSON_DEPTH} levels**" in guide
    assert f"nests deeper than {MAX_JSON_DEPTH} levels" in guide


def check_route(send: Sender) -> None:
    """Every malformed shape against one route: each answer refused (checked by the sender), and
    precise where every route can be: UTF-8 named with its offset, the nesting limit, 415s."""
    route = send.route

    # Invalid UTF-8 in a key and in a string value, named with its byte offset.
    key = send(b'{"\xff": 1}')
    assert key.status_code == 400 and "not valid UTF-8" in detail(key), key.text
    assert "0xFF at byte offset 2" in detail(key)
    cut_char = b'{"events": [], "x": "caf\xc3"}'  # a two-byte character cut after its first byte
    value = send(cut_char)
    # Only a schema that refuses the field "x" before reading its value may answer otherwise.
    assert value.status_code == 422 or (
        f"0xC3 at byte offset {cut_char.index(0xC3)}" in detail(value) and value.status_code == 400
    ), value.text

    # Nesting: 18 KB of brackets, and one level past the documented limit.
    for nested in (DEEP, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)):
        deep = send(nested)
        # 422 only from a schema that wants an object and says so before descending.
        assert (deep.status_code == 422 and "Expected `object`" in detail(deep)) or (
            deep.status_code == 400 and f"deeper than {MAX_JSON_DEPTH} levels" in detail(deep)
        ), deep.text
    at_limit = send(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert "deeper than" not in detail(at_limit)
    send(b'{"events": [], "x": ' + DEEP + b"}")

    # Truncated anywhere, through a multi-byte character too; and empty.
    whole = json.dumps(
        {"events": [{"event": "e", "p": [1, {"q": '\\"'}]}], "name": "Fuzz \u00e9t\u00e9"},
        ensure_ascii=False,
    ).encode()
    for cut in range(len(whole)):
        cut_off = send(whole[:cut])
        if cut == 0:
            assert cut_off.status_code == 400, cut_off.text
            assert route.raw_body or "empty" in detail(cut_off)
        elif not route.raw_body:  # decoded whole before any field is looked at
            assert cut_off.status_code == 400, cut_off.text
            assert "not valid JSON" in detail(cut_off) or "not valid UTF-8" in detail(cut_off)

    # Media types: JSON only, text/plain where the route reads beacons; gzip where it says so.
    for media_type in WRONG_TYPES:
        wrong = send(b"{}", **{"content-type": media_type})
        assert wrong.status_code == 415, f"{route} {media_type}: {wrong.text}"
        if "charset" in media_type:
            assert "UTF-8" in detail(wrong)
        else:
            assert wrong.headers["accept-post"].startswith("application/json")
    plain = send(b'{"', **{"content-type": "text/plain;charset=UTF-8"})
    assert plain.status_code == (400 if route.text_plain else 415), plain.text
    zipped = send(gzip.compress(b'{"\xff": 1}'), **{"content-encoding": "gzip"})
    if route.raw_body:
        assert zipped.status_code == 400 and "UTF-8" in detail(zipped), zipped.text
    else:
        assert zipped.status_code == 415 and zipped.headers["accept-encoding"] == "identity"
    assert send(b"{}", **{"content-encoding": "br"}).status_code == 415


def test_every_json_route_refuses_malformed_bodies_precisely(
    app: Litestar,
    client: httpx.Client,
    engine: Engine,
    org: OrgWorld,
    staff_admin: tuple[str, str],
    logs: pytest.LogCaptureFixture,
) -> None:
    credentials = [org.headers("owner"), auth(org.ingest_key), auth(staff_admin[1])]
    caller = Caller(client)
    before, outcomes_before = row_counts(engine), inbound_outcomes(engine)
    routes = json_routes(app)
    for route in routes:
        url = fill(route.template, org)
        # The first credential whose truncated body is judged (400) is past authentication.
        headers = next((h for h in credentials if caller.send(route, url, h, b'{"').status_code == 400), None)
        assert headers is not None, f"no credential reaches the body of {route}: add one to the test"
        check_route(Sender(caller, route, url, headers))

    after, outcomes_after = row_counts(engine), inbound_outcomes(engine)
    assert {t: n for t, n in after.items() if t not in REFUSAL_LOGS} == {
        t: n for t, n in before.items() if t not in REFUSAL_LOGS
    }, "a malformed body wrote something"
    # The Stripe receiver's refusals are recorded, as refusals: nothing was accepted.
    assert outcomes_after == outcomes_before | {"rejected": outcomes_after.get("rejected", 0)}

    # The server log holds one line per request (the access line): no traceback, no error record.
    assert not [r for r in logs.records if r.exc_info or r.levelno >= logging.ERROR]
    lines: dict[str, int] = {}
    for record in logs.records:
        request_id = getattr(record, "fields", {}).get("request_id")
        if request_id:
            lines[request_id] = lines.get(request_id, 0) + 1
    assert len(caller.sent) > 40 * len(routes)
    assert all(lines.get(request_id) == 1 for request_id in caller.sent), (
        "a request logged more or less than one line"
    )


def stored_ids(engine: Engine, org_id: str) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id FROM events WHERE organization_id = :o"), {"o": org_id})
        return set(rows.scalars())


def event_bytes(**fields: object) -> bytes:
    return json.dumps(
        {"event": "page.viewed", "user_id": "u-1", "message_id": uuid.uuid4().hex, **fields}
    ).encode()


@pytest.mark.parametrize("past_recursion_limit", [False, True], ids=["decoded whole", "cut apart"])
def test_a_batch_rejects_malformed_events_by_index_and_stores_the_rest(
    client: httpx.Client, engine: Engine, org: OrgWorld, past_recursion_limit: bool
) -> None:
    """Bytes that are not UTF-8 inside an event, or an event nested too deep, are that event's
    rejection; the valid events are stored. An event nested past the decoder's own recursion limit
    (9,000 levels) makes the server cut the events out of the body itself: same answer."""
    valid = [event_bytes(), event_bytes(properties={"ok": "caf\u00e9"}), event_bytes()]
    bad_value = b'{"event": "page.viewed", "user_id": "u-\xff"}'
    bad_key = b'{"event": "page.viewed", "user_id": "u", "properties": {"\xc3(": 1}}'
    nested = MAX_JSON_DEPTH if not past_recursion_limit else 9000
    too_deep = b'{"event": "e", "user_id": "u", "properties": {"p": ' + b"[" * nested + b"]" * nested + b"}}"
    at_limit = b'{"event": "e", "user_id": "u", "message_id": "at-limit", "properties": {"p": ' + (
        b"[" * (MAX_JSON_DEPTH - 2) + b"]" * (MAX_JSON_DEPTH - 2) + b"}}"
    )
    items = [valid[0], bad_value, valid[1], bad_key, too_deep, valid[2], at_limit]
    body = b'{"sent_at": null, "events": [' + b",\n ".join(items) + b"]}"
    response = client.post(
        "/v1/events/batch", content=body, headers={**auth(org.ingest_key), "content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["accepted"] == 4 and result["duplicates"] == 0
    rejected = {r["index"]: r["error"] for r in result["rejected"]}
    assert sorted(rejected) == [1, 3, 4]
    assert rejected[1] == (
        f"the event is not valid UTF-8: invalid byte 0xFF at byte offset {bad_value.index(0xFF)} "
        "(invalid start byte)"
    )
    assert f"invalid byte 0xC3 at byte offset {bad_key.index(0xC3)}" in rejected[3]
    assert rejected[4] == f"the event nests arrays and objects deeper than {MAX_JSON_DEPTH} levels, the limit"
    expected = {json.loads(v)["message_id"] for v in valid} | {"at-limit"}
    assert stored_ids(engine, org.id) == expected


def test_invalid_utf8_in_the_batch_envelope_is_a_400_naming_its_offset(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    """Outside the events the whole request is at fault: 400, naming the envelope's byte (not an
    invalid byte inside an event, which would be that event's rejection)."""
    body = b'{"events": [{"event": "x", "user_id": "\xff"}], "sent_\xfeat": null}'
    response = client.post("/v1/events/batch", content=body, headers=auth(org.ingest_key))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert f"invalid byte 0xFE at byte offset {body.index(0xFE)}" in response.json()["detail"]
    assert stored_ids(engine, org.id) == set()


def test_beacons_send_text_plain_json_to_the_ingest_routes(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    """``navigator.sendBeacon(url, JSON.stringify(…))`` sends ``text/plain;charset=UTF-8``."""
    beacon = {**auth(org.ingest_key), "content-type": "text/plain;charset=UTF-8"}
    one, batch = event_bytes(), [event_bytes(), event_bytes()]
    assert client.post("/v1/events", content=one, headers=beacon).json()["accepted"] == 1
    answer = client.post(
        "/v1/events/batch", content=b'{"events": [' + b",".join(batch) + b"]}", headers=beacon
    )
    assert answer.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert len(stored_ids(engine, org.id)) == 3
    # A management route reads JSON only.
    refused = client.post("/v1/orgs", content=b'{"name": "Beacon", "slug": "beacon-org"}',
                          headers={**org.headers("owner"), "content-type": "text/plain"})  # fmt: skip
    assert refused.status_code == 415 and refused.headers["accept-post"] == "application/json"
    assert "text/plain" in refused.json()["detail"]
