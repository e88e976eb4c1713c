"""Segment's HTTP Tracking API under /segment, driven by Segment's own Python SDK and by hand."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segment.analytics import Client
from sqlalchemy import Engine, text

from tests.harness import LiveServer, OrgWorld, auth, make_org
from tests.test_bad_input import assert_problem

pytestmark = pytest.mark.api


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def events_of(engine: Engine, org_id: str) -> list[dict[str, Any]]:
    return rows(engine, "SELECT * FROM events WHERE organization_id = :o ORDER BY ingest_seq", o=org_id)


def warnings_of(engine: Engine, token_id: str) -> list[dict[str, Any]]:
    return rows(engine, "SELECT * FROM ingestion_warnings WHERE token_id = :t ORDER BY id", t=token_id)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def sdk(live_server: LiveServer, key: str, errors: list[Any], **options: Any) -> Client:
    return Client(
        write_key=key,
        host=f"{live_server.url}/segment",
        on_error=lambda error, batch: errors.append((error, batch)),
        max_retries=0,
        **options,
    )


def send_every_call(client: Client, *, user: str, group: str, at: datetime, ids: dict[str, str]) -> None:
    # identify names the org as every other non-group call does (a platform key needs it).
    context = {"groupId": group}
    client.identify(
        user,
        {"email": f"{user}@acme.example", "role": "admin"},
        context=dict(context),
        timestamp=at,
        message_id=ids["identify"],
    )
    client.group(user, group, {"plan": "enterprise", "employees": 120}, timestamp=at, message_id=ids["group"])
    client.track(
        user,
        "Report Exported",
        {"format": "pdf"},
        context=dict(context),
        timestamp=at,
        message_id=ids["track"],
    )
    client.page(
        user,
        "Docs",
        "Install",
        {"path": "/docs/install"},
        context=dict(context),
        timestamp=at,
        message_id=ids["page"],
    )
    client.screen(
        user, "Settings", "Billing", {"tab": 2}, context=dict(context), timestamp=at, message_id=ids["screen"]
    )
    client.alias("anon-" + user, user, context=dict(context), timestamp=at, message_id=ids["alias"])


def call_ids() -> dict[str, str]:
    return {kind: str(uuid.uuid4()) for kind in ("identify", "group", "track", "page", "screen", "alias")}


def check_landed(
    engine: Engine,
    org: OrgWorld,
    *,
    user: str,
    ids: dict[str, str],
    at: datetime,
    library: str = "analytics-python",
) -> None:
    """Each of the six calls stored once in ``org`` as the SDK named ``library`` sent it, with the
    person's traits, the org's traits and the alias."""
    stored = events_of(engine, org.id)
    by_id = {row["message_id"]: row for row in stored}
    assert sorted(by_id) == sorted(ids.values()) and len(stored) == 6  # each call once
    names = {kind: by_id[mid]["event"] for kind, mid in ids.items()}
    assert names == {"identify": "$identify", "group": "$group", "track": "Report Exported",
                     "page": "$page", "screen": "$screen", "alias": "$alias"}  # fmt: skip
    assert by_id[ids["track"]]["properties"] == {"format": "pdf"}
    assert by_id[ids["page"]]["properties"] == {
        "path": "/docs/install",
        "name": "Install",
        "category": "Docs",
    }
    assert by_id[ids["alias"]]["properties"] == {"previous_id": "anon-" + user}
    for row in stored:
        assert row["user_id"] == user
        assert row["context"]["library"]["name"] == library
        # The client's clock is right here, so skew correction moves it by the request's latency only.
        assert abs(row["timestamp"] - at) < timedelta(seconds=30)
    (person,) = rows(engine, "SELECT * FROM people WHERE organization_id = :o", o=org.id)
    assert person["user_id"] == user and person["traits"] == {
        "email": f"{user}@acme.example",
        "role": "admin",
    }
    (traits,) = rows(engine, "SELECT traits FROM organizations WHERE id = :o", o=org.id)
    assert traits["traits"] == {"plan": "enterprise", "employees": 120}
    (alias,) = rows(engine, "SELECT * FROM identity_aliases WHERE organization_id = :o", o=org.id)
    assert alias["previous_id"] == "anon-" + user and alias["user_id"] == user


def test_the_official_sdk_with_an_org_key_lands_every_call_once(
    client: httpx.Client, engine: Engine, live_server: LiveServer
) -> None:
    org = make_org(client, engine, roles=("owner",))
    set_external = client.patch(
        f"/v1/orgs/{org.id}", json={"external_id": f"acct-{org.slug}"}, headers=org.headers("owner")
    )
    assert set_external.status_code == 200, set_external.text
    errors: list[Any] = []
    segment = sdk(live_server, org.ingest_key, errors, gzip=True, upload_size=100)
    at = datetime.now(UTC).replace(microsecond=0)
    ids = call_ids()
    send_every_call(segment, user="ada", group=f"acct-{org.slug}", at=at, ids=ids)
    segment.flush()
    segment.join()
    assert errors == []
    check_landed(engine, org, user="ada", ids=ids, at=at)
    shown = client.get(f"/v1/orgs/{org.id}", headers=org.headers("owner")).json()
    assert shown["external_id"] == f"acct-{org.slug}" and shown["traits"]["plan"] == "enterprise"
    people = client.get(
        f"/v1/orgs/{org.id}/people", params={"trait": "role:admin"}, headers=org.headers("owner")
    )
    assert people.status_code == 200, people.text
    assert [p["user_id"] for p in people.json()["items"]] == ["ada"]
    assert people.json()["items"][0]["aliases"] == ["anon-ada"]
    nobody = client.get(
        f"/v1/orgs/{org.id}/people", params={"trait": "role:viewer"}, headers=org.headers("owner")
    )
    assert nobody.json()["items"] == []
    one = client.get(f"/v1/orgs/{org.id}/people/ada", headers=org.headers("owner"))
    assert one.status_code == 200 and one.json()["traits"]["email"] == "ada@acme.example"


def test_an_anonymous_identify_makes_a_person_that_alias_or_identify_merges_into_the_user(
    client: httpx.Client, engine: Engine, live_server: LiveServer
) -> None:
    """Visitors known only by an anonymous id are people of their own (marked anonymous); an
    identify carrying both ids, or an alias, merges one into the user with its traits and first
    seen; a later anonymous identify of a merged id updates the user; a replay changes nothing."""
    org = make_org(client, engine, roles=("owner",))
    errors: list[Any] = []
    segment = sdk(live_server, org.ingest_key, errors)
    day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)

    def person(user_id: str) -> httpx.Response:
        return client.get(f"/v1/orgs/{org.id}/people/{user_id}", headers=org.headers("owner"))

    def listed() -> dict[str, dict[str, Any]]:
        answer = client.get(f"/v1/orgs/{org.id}/people", headers=org.headers("owner"))
        assert answer.status_code == 200, answer.text
        return {p["user_id"]: p for p in answer.json()["items"]}

    first_visit = str(uuid.uuid4())
    segment.identify(anonymous_id="anon-a", traits={"theme": "dark", "plan": "free"}, timestamp=day,
                     message_id=first_visit)  # fmt: skip
    segment.identify(anonymous_id="anon-b", traits={"utm": "ad"}, timestamp=day + timedelta(hours=1))
    segment.flush()
    visitors = listed()
    assert {k: (v["anonymous"], v["traits"]) for k, v in visitors.items()} == {
        "anon-a": (True, {"theme": "dark", "plan": "free"}),
        "anon-b": (True, {"utm": "ad"}),
    }

    # anon-a signs up (an identify with both ids); anon-b is aliased to a user never identified.
    signed_up = day + timedelta(days=1)
    segment.identify(
        "ada", {"email": "ada@acme.example", "plan": "pro"}, anonymous_id="anon-a", timestamp=signed_up
    )
    segment.alias("anon-b", "bob", timestamp=signed_up)
    segment.flush()
    people = listed()
    assert set(people) == {"ada", "bob"} and not any(p["anonymous"] for p in people.values())
    assert people["ada"]["traits"] == {"theme": "dark", "plan": "pro", "email": "ada@acme.example"}
    assert people["ada"]["aliases"] == ["anon-a"] and people["bob"]["aliases"] == ["anon-b"]
    assert people["bob"]["traits"] == {"utm": "ad"}
    for name, visitor in (("ada", "anon-a"), ("bob", "anon-b")):
        assert datetime.fromisoformat(people[name]["first_seen_at"]) == datetime.fromisoformat(
            visitors[visitor]["first_seen_at"]
        )
        assert person(visitor).json() == people[name]  # the merged id reads the user

    # Later, the old anonymous id again (a stale tab), and a replay of the first visit.
    segment.identify(anonymous_id="anon-a", traits={"theme": "light"}, timestamp=day + timedelta(days=2))
    segment.identify(anonymous_id="anon-a", traits={"theme": "dark", "plan": "free"}, timestamp=day,
                     message_id=first_visit)  # fmt: skip
    segment.flush()
    segment.join()
    assert errors == []
    ada = person("ada").json()
    assert ada["traits"] == {"theme": "light", "plan": "pro", "email": "ada@acme.example"}
    assert set(listed()) == {"ada", "bob"}
    stored = rows(
        engine,
        "SELECT user_id, anonymous, merged_into FROM people WHERE organization_id = :o ORDER BY user_id",
        o=org.id,
    )
    assert [tuple(r.values()) for r in stored] == [
        ("ada", False, None), ("anon-a", True, "ada"), ("anon-b", True, "bob"), ("bob", False, None),
    ]  # fmt: skip
    merges = rows(
        engine,
        "SELECT previous_id, user_id FROM identity_aliases WHERE organization_id = :o ORDER BY 1",
        o=org.id,
    )
    assert [tuple(r.values()) for r in merges] == [("anon-a", "ada"), ("anon-b", "bob")]
    assert person("nobody").status_code == 404


def test_the_official_sdk_with_a_platform_key_names_orgs_by_external_id(
    client: httpx.Client, engine: Engine, live_server: LiveServer, staff_admin: tuple[str, str]
) -> None:
    _, admin_token = staff_admin
    made = client.post("/v1/admin/ingest-keys", json={"name": "segment source"}, headers=auth(admin_token))
    assert made.status_code == 201, made.text
    platform_key = made.json()["token"]
    orgs = []
    for _ in range(2):
        org = make_org(client, engine, roles=("owner",))
        external = f"acct-{uuid.uuid4().hex[:8]}"
        assert (
            client.patch(
                f"/v1/orgs/{org.id}", json={"external_id": external}, headers=org.headers("owner")
            ).status_code
            == 200
        )
        orgs.append((org, external))
    errors: list[Any] = []
    segment = sdk(live_server, platform_key, errors, sync_mode=True)
    at = datetime.now(UTC).replace(microsecond=0)
    sent = []
    for org, external in orgs:
        ids = call_ids()
        send_every_call(segment, user=f"user-{external}", group=external, at=at, ids=ids)
        sent.append((org, external, ids))
    assert errors == []
    for org, external, ids in sent:
        check_landed(engine, org, user=f"user-{external}", ids=ids, at=at)


def segment_call(**fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Report Exported",
        "userId": "u-1",
        "messageId": str(uuid.uuid4()),
        **fields,
    }


def test_a_replayed_batch_stores_nothing_twice(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    batch = {
        "batch": [segment_call(), segment_call(type="identify", traits={"plan": "pro"}, event=None),
                  segment_call(type="group", groupId=org.id, traits={"seats": 3}, event=None)],
        "sentAt": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    for _ in range(3):
        answer = client.post("/segment/v1/batch", json=batch, headers=basic(org.ingest_key))
        assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text
    assert len(events_of(engine, org.id)) == 3
    changes = rows(engine, "SELECT * FROM org_trait_changes WHERE organization_id = :o", o=org.id)
    assert len(changes) == 1 and changes[0]["traits"] == {"seats": 3}
    assert len(rows(engine, "SELECT * FROM person_trait_changes WHERE organization_id = :o", o=org.id)) == 1


def test_sent_at_corrects_the_clients_clock(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    # The client's clock runs two hours ahead: its timestamp and sentAt both say so.
    skew = timedelta(hours=2)
    happened = datetime.now(UTC) - timedelta(minutes=5)
    body = {
        "batch": [segment_call(timestamp=(happened + skew).isoformat())],
        "sentAt": (datetime.now(UTC) + skew).isoformat(),
    }
    assert client.post("/segment/v1/batch", json=body, headers=basic(org.ingest_key)).status_code == 200
    (row,) = events_of(engine, org.id)
    assert abs(row["timestamp"] - happened) < timedelta(seconds=30)


def test_an_unresolvable_group_id_lands_in_ingestion_warnings_and_nowhere_else(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    _, admin_token = staff_admin
    platform_key = client.post("/v1/admin/ingest-keys", json={"name": "p"}, headers=auth(admin_token)).json()
    ghost = f"acct-ghost-{uuid.uuid4().hex[:6]}"
    lost = segment_call(context={"groupId": ghost})
    body = {"batch": [lost, segment_call(context={"groupId": org.id})]}
    answer = client.post("/segment/v1/batch", json=body, headers=basic(platform_key["token"]))
    assert answer.status_code == 200 and answer.json() == {"success": True}
    assert [e["message_id"] for e in events_of(engine, org.id)] == [body["batch"][1]["messageId"]]
    assert rows(engine, "SELECT 1 FROM events WHERE message_id = :m", m=lost["messageId"]) == []
    (warning,) = warnings_of(engine, platform_key["id"])
    assert warning["reason"] == "unknown_org" and warning["organization_id"] is None
    assert warning["count"] == 1 and warning["message_id"] == lost["messageId"] and ghost in warning["sample"]
    staff = client.get(
        "/v1/admin/ingestion-warnings", params={"unresolved": "true"}, headers=auth(admin_token)
    )
    assert staff.status_code == 200, staff.text
    assert lost["messageId"] in [w["message_id"] for w in staff.json()["items"]]
    # An org key naming another org's id cannot write there: a warning in its own org.
    foreign = segment_call(context={"groupId": other_org.id})
    client.post("/segment/v1/track", json=foreign, headers=basic(org.ingest_key))
    assert rows(engine, "SELECT 1 FROM events WHERE message_id = :m", m=foreign["messageId"]) == []
    (mine,) = warnings_of(engine, org.ingest_key_id)
    assert mine["reason"] == "foreign_org" and mine["organization_id"] == uuid.UUID(org.id)
    listed = client.get(f"/v1/orgs/{org.id}/ingestion-warnings", headers=org.headers("viewer"))
    assert listed.status_code == 200 and [w["reason"] for w in listed.json()["items"]] == ["foreign_org"]
    assert (
        client.get(f"/v1/orgs/{org.id}/ingestion-warnings", headers=other_org.headers("owner")).status_code
        == 404
    )


def test_each_call_names_its_own_org_however_its_group_id_is_spelled(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    # The references are found in the body before the calls are read (services.find_refs): a key
    # spelled with JSON escapes, escaped text elsewhere and calls naming none share one batch.
    _, admin_token = staff_admin
    platform_key = client.post("/v1/admin/ingest-keys", json={"name": "p"}, headers=auth(admin_token)).json()
    external = f"acct-{uuid.uuid4().hex[:8]}"
    patched = client.patch(f"/v1/orgs/{org.id}", json={"external_id": external}, headers=org.headers("owner"))
    assert patched.status_code == 200, patched.text

    def escaped(call: dict[str, Any], key: str) -> str:
        return json.dumps(call).replace('"groupId"', key)  # json.dumps escapes the ü too

    plain = segment_call(context={"groupId": external}, properties={"city": "Zürich"})
    by_id = segment_call(context={"groupId": org.id.upper()})
    unnamed = segment_call(properties={"city": "Zürich"})
    group = segment_call(type="group", event=None, groupId=external, traits={"plan": "scale"})
    body = ('{"batch": [' + ", ".join([json.dumps(plain), escaped(by_id, '"groupI\\u0064"'), json.dumps(unnamed),
                                       escaped(group, '"group\\u0049d"')]) + "]}")  # fmt: skip
    answer = client.post("/segment/v1/batch", content=body, headers={**basic(platform_key["token"]),
                         "Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text
    stored = {e["message_id"]: e for e in events_of(engine, org.id)}
    assert sorted(stored) == sorted(c["messageId"] for c in (plain, by_id, group))
    assert stored[plain["messageId"]]["properties"] == {"city": "Zürich"}
    assert stored[by_id["messageId"]]["context"]["groupId"] == org.id.upper()
    assert rows(engine, "SELECT traits FROM organizations WHERE id = :o", o=org.id) == [
        {"traits": {"plan": "scale"}}
    ]
    (warning,) = warnings_of(engine, platform_key["id"])
    assert warning["reason"] == "unknown_org" and warning["message_id"] == unnamed["messageId"]
    # An org key: the call naming another org by an escaped key is refused as naming another org
    # (it was resolved), the others land in the key's own.
    mine, foreign = segment_call(), segment_call(context={"groupId": other_org.id})
    body = '{"batch": [' + json.dumps(mine) + ", " + escaped(foreign, '"\\u0067roupId"') + "]}"
    answer = client.post("/segment/v1/batch", content=body, headers={**basic(org.ingest_key),
                         "Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert mine["messageId"] in {e["message_id"] for e in events_of(engine, org.id)}
    assert rows(engine, "SELECT 1 FROM events WHERE message_id = :m", m=foreign["messageId"]) == []
    (refused,) = warnings_of(engine, org.ingest_key_id)
    assert refused["reason"] == "foreign_org" and refused["message_id"] == foreign["messageId"]


def test_a_group_call_sets_traits_only_on_the_keys_own_org(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld
) -> None:
    call = {"userId": "u-1", "groupId": other_org.id, "traits": {"plan": "stolen"}, "messageId": "g-1"}
    refused = client.post("/segment/v1/group", json=call, headers=basic(org.ingest_key))
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "org_id", refused.text
    assert rows(engine, "SELECT traits FROM organizations WHERE id = :o", o=other_org.id) == [{"traits": {}}]


def test_gzip_text_plain_and_bearer_are_accepted(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    packed = gzip.compress(json.dumps({"batch": [segment_call()]}).encode())
    headers = {**auth(org.ingest_key), "Content-Encoding": "gzip", "Content-Type": "text/plain"}
    answer = client.post("/segment/v1/batch", content=packed, headers=headers)
    assert answer.status_code == 200, answer.text
    assert len(events_of(engine, org.id)) == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic !!!"}, 401),
        ({"Authorization": "Basic " + base64.b64encode(b"keel_ik_nope:").decode()}, 401),
        ({"Authorization": "Basic " + base64.b64encode(b"key:password").decode()}, 401),
        ({"Authorization": "Token abc"}, 401),
    ],
)
def test_wrong_auth_forms_are_401(client: httpx.Client, headers: dict[str, str], status: int) -> None:
    answer = client.post("/segment/v1/batch", json={"batch": [segment_call()]}, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_a_user_token_cannot_send_calls(client: httpx.Client, org: OrgWorld) -> None:
    answer = client.post("/segment/v1/track", json=segment_call(), headers=basic(org.tokens["owner"]))
    assert answer.status_code == 403


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b'{"batch": 3}', 422),
        (b"[]", 422),
        (b'{"batch": [' + b"[" * 100 + b"]" * 100 + b"]}", 200),  # one call too deep: one warning
        (json.dumps({"batch": [segment_call()] * 5001}).encode(), 413),
    ],
)
def test_malformed_and_oversized_batches(
    client: httpx.Client, org: OrgWorld, body: bytes, status: int
) -> None:
    answer = client.post(
        "/segment/v1/batch",
        content=body,
        headers={**basic(org.ingest_key), "Content-Type": "application/json"},
    )
    assert answer.status_code == status, answer.text


def test_bad_gzip_and_gzip_bombs(client: httpx.Client, org: OrgWorld) -> None:
    headers = {**basic(org.ingest_key), "Content-Encoding": "gzip"}
    assert client.post("/segment/v1/batch", content=b"\x1f\x8b not gzip", headers=headers).status_code == 400
    truncated = gzip.compress(json.dumps({"batch": [segment_call()]}).encode())[:-6]
    assert client.post("/segment/v1/batch", content=truncated, headers=headers).status_code == 400
    bomb = gzip.compress(b'{"batch": [' + b" " * (6 * 1024 * 1024) + b"]}")
    assert client.post("/segment/v1/batch", content=bomb, headers=headers).status_code == 413


#: What analytics.js posts to ``<apiHost>/m`` (its own telemetry; ``core/stats/remote-metrics.ts``).
ANALYTICS_JS_METRICS = {
    "series": [
        {"type": "Counter", "metric": "analytics_js.invoke", "value": 1,
         "tags": {"0": "track", "library": "analytics.js", "library_version": "npm:next-1.84.3"}},
    ]
}  # fmt: skip


def test_analytics_js_telemetry_is_answered_and_kept_nowhere(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    def count(table: str) -> int:
        return rows(engine, f"SELECT count(*) AS n FROM {table}")[0]["n"]

    before = (count("events"), count("ingestion_warnings"))
    # As the SDK sends it: no key, text/plain, from a page's origin (CORS, as on the other routes).
    answer = client.post(
        "/segment/v1/m",
        content=json.dumps(ANALYTICS_JS_METRICS),
        headers={"Content-Type": "text/plain", "Origin": "https://app.acme.example"},
    )
    assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text
    assert answer.headers["access-control-allow-origin"] == "https://app.acme.example"
    preflight = client.options(
        "/segment/v1/m",
        headers={"Origin": "https://app.acme.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"]
    # A key is not needed, and one sent changes nothing.
    keyed = client.post("/segment/v1/m", json=ANALYTICS_JS_METRICS, headers=basic(org.ingest_key))
    assert keyed.status_code == 200, keyed.text
    assert (count("events"), count("ingestion_warnings")) == before


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {}, 400),
        (b"", {}, 400),
        (b"[]", {}, 422),
        (b'{"series": 3}', {}, 422),
        (b'{"other": []}', {}, 422),
        (json.dumps({"series": [{"metric": "x" * 1000}] * 100}).encode(), {}, 413),
        (b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(b'{"series": [' + b" " * (128 * 1024) + b"]}"), {"Content-Encoding": "gzip"}, 413),
        (b'{"series": []}', {"Content-Type": "application/xml"}, 415),
    ],
)
def test_malformed_and_oversized_telemetry_is_a_precise_problem(
    client: httpx.Client, body: bytes, headers: dict[str, str], status: int
) -> None:
    answer = client.post("/segment/v1/m", content=body, headers={"Content-Type": "text/plain", **headers})
    assert_problem(answer, status)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("userId", {"a": 1}, "invalid_field"),
        ("type", "purchase", "invalid_field"),
        ("timestamp", "yesterday", "invalid_field"),
        ("timestamp", "2999-01-01T00:00:00Z", "timestamp_out_of_range"),
        ("properties", [1, 2], "invalid_field"),
        ("context", "x", "invalid_field"),
        ("event", "", "invalid_field"),
        ("messageId", "m" * 200, "invalid_field"),
        ("properties", {"blob": "x" * 40_000}, "oversized"),
    ],
)
def test_invalid_fields_are_warnings_never_failures(
    client: httpx.Client, engine: Engine, org: OrgWorld, field: str, value: Any, reason: str
) -> None:
    bad = segment_call(**{field: value})
    good = segment_call()
    answer = client.post("/segment/v1/batch", json={"batch": [bad, good]}, headers=basic(org.ingest_key))
    assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text
    assert [e["message_id"] for e in events_of(engine, org.id)] == [good["messageId"]]
    (warning,) = warnings_of(engine, org.ingest_key_id)
    assert warning["reason"] == reason, warning


def test_ingestion_warnings_are_kept_thirty_days(engine: Engine, database_url: str, org: OrgWorld) -> None:
    from pipelines.tasks.retention import purge_ingestion_warnings

    now = datetime.now(UTC)
    with engine.begin() as conn:
        for days_ago, reason in ((31, "oversized"), (29, "invalid_field")):
            seen = now - timedelta(days=days_ago)
            conn.execute(
                text(
                    "INSERT INTO ingestion_warnings VALUES (:id, :o, :t, :r, :d, 1, :s, :s, NULL, 'e', '{}')"
                ),
                {
                    "id": uuid.uuid4(),
                    "o": org.id,
                    "t": org.ingest_key_id,
                    "r": reason,
                    "d": seen.date(),
                    "s": seen,
                },
            )
    assert purge_ingestion_warnings(database_url, now=now) >= 1
    assert [w["reason"] for w in warnings_of(engine, org.ingest_key_id)] == ["invalid_field"]


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_times = st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()) | st.text(
    max_size=30
)
_FIELDS = {
    "type": st.sampled_from(["track", "identify", "group", "page", "screen", "alias", "purchase"])
    | _json_values,
    "userId": st.text(max_size=300) | st.integers() | _json_values,
    "anonymousId": st.text(max_size=300) | st.integers() | _json_values,
    "messageId": st.text(max_size=200) | _json_values,
    "timestamp": _times | _json_values,
    "originalTimestamp": _times,
    "sentAt": _times,
    "context": st.dictionaries(st.sampled_from(["groupId", "ip", "library", "x"]), _json_values, max_size=3)
    | _json_values,
    "properties": st.dictionaries(st.text(max_size=8), _json_values, max_size=4) | _json_values,
    "traits": st.dictionaries(st.text(max_size=8), _json_values, max_size=4) | _json_values,
    "event": st.text(max_size=250) | _json_values,
    "name": st.text(max_size=20) | _json_values,
    "category": st.text(max_size=20) | _json_values,
    "groupId": st.text(max_size=40) | st.integers() | _json_values,
    "previousId": st.text(max_size=40) | st.integers() | _json_values,
    "integrations": st.dictionaries(st.text(max_size=8), st.booleans(), max_size=2) | _json_values,
}
_messages = st.fixed_dictionaries({}, optional=_FIELDS)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.lists(_messages, max_size=4),
    path=st.sampled_from(["batch", "track", "identify", "group", "page", "screen", "alias"]),
    sent_at=_times | _json_values,
)
def test_fuzzing_the_segment_schema_finds_no_500(
    client: httpx.Client, org: OrgWorld, batch: list[dict[str, Any]], path: str, sent_at: Any
) -> None:
    body: Any = {"batch": batch, "sentAt": sent_at} if path == "batch" else (batch[0] if batch else {})
    answer = client.post(
        f"/segment/v1/{path}",
        content=json.dumps(body),
        headers={**basic(org.ingest_key), "Content-Type": "application/json"},
    )
    assert answer.status_code in {200, 400, 413, 422}, answer.text
    if answer.status_code == 200:
        assert answer.json() == {"success": True}
    else:
        assert answer.headers["content-type"].startswith("application/problem+json")


def test_external_id_is_set_unique_cleared_audited_and_shown_to_staff(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, staff_support: tuple[str, str]
) -> None:
    external = f"acct-{uuid.uuid4().hex[:8]}"
    owner = org.headers("owner")
    assert (
        client.patch(
            f"/v1/orgs/{org.id}", json={"external_id": external, "traits": {"plan": "pro"}}, headers=owner
        ).status_code
        == 200
    )
    taken = client.patch(
        f"/v1/orgs/{other_org.id}", json={"external_id": external}, headers=other_org.headers("owner")
    )
    assert taken.status_code == 409 and taken.json()["errors"][0]["field"] == "external_id"
    for bad in ("", " ", "a\x00b", "x" * 256, 42):
        refused = client.patch(f"/v1/orgs/{org.id}", json={"external_id": bad}, headers=owner)
        assert refused.status_code in {400, 422}, (bad, refused.text)
    assert client.patch(f"/v1/orgs/{org.id}", json={"traits": []}, headers=owner).status_code in {400, 422}
    assert (
        client.patch(
            f"/v1/orgs/{org.id}", json={"external_id": "nope"}, headers=org.headers("member")
        ).status_code
        == 403
    )
    made = client.post(
        "/v1/orgs",
        json={"name": "Dup", "slug": f"dup-{uuid.uuid4().hex[:6]}", "external_id": external},
        headers=owner,
    )
    assert made.status_code == 409
    (entry,) = [
        e
        for e in rows(
            engine, "SELECT * FROM audit_log WHERE organization_id = :o AND action = 'org.updated'", o=org.id
        )
    ]
    assert entry["metadata"]["after"]["external_id"] == external and entry["metadata"]["after"]["traits"] == {
        "plan": "pro"
    }
    _, support = staff_support
    view = client.get(f"/v1/admin/orgs/{org.id}", headers=auth(support)).json()
    assert view["external_id"] == external and view["traits"] == {"plan": "pro"}
    listed = client.get("/v1/admin/orgs", params={"q": org.slug}, headers=auth(support)).json()
    assert listed["items"][0]["external_id"] == external
    cleared = client.patch(f"/v1/orgs/{org.id}", json={"external_id": None}, headers=owner)
    assert cleared.status_code == 200 and cleared.json()["external_id"] is None
