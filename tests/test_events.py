"""Event ingestion as product clients see it: stored once, after commit, with precise rejections."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from tests.harness import OrgWorld, auth


def stored(engine: Engine, org_id: str, **where: str) -> list[dict]:
    clauses = "".join(f" AND {k} = :{k}" for k in where)
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT * FROM events WHERE organization_id = :org{clauses} ORDER BY ingest_seq"),
            {"org": org_id, **where},
        )
        return [dict(r._mapping) for r in rows]


def event(**fields) -> dict:
    return {"event": "report.exported", "user_id": "u-1", "message_id": uuid.uuid4().hex, **fields}


def test_one_event_is_stored_with_the_keys_org_and_request_context(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    body = event(properties={"format": "pdf", "pages": 3})
    response = client.post(
        "/v1/events", json=body, headers={**auth(org.ingest_key), "User-Agent": "acme-sdk/2.1"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    (row,) = stored(engine, org.id)
    assert row["event"] == "report.exported" and row["message_id"] == body["message_id"]
    assert row["properties"] == {"format": "pdf", "pages": 3}
    assert row["context"]["user_agent"] == "acme-sdk/2.1" and row["context"]["ip"] == "127.0.0.1"
    assert abs((row["timestamp"] - row["received_at"]).total_seconds()) < 1


def test_message_id_dedupes_across_retries_and_batches(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    first = event()
    headers = auth(org.ingest_key)
    assert client.post("/v1/events", json=first, headers=headers).json()["accepted"] == 1
    assert client.post("/v1/events", json=first, headers=headers).json() == {
        "accepted": 0,
        "duplicates": 1,
        "rejected": [],
    }
    batch = {"events": [first, event(), event(), first]}
    assert client.post("/v1/events/batch", json=batch, headers=headers).json() == {
        "accepted": 2,
        "duplicates": 2,
        "rejected": [],
    }
    assert len(stored(engine, org.id, message_id=first["message_id"])) == 1
    assert len(stored(engine, org.id)) == 3


def test_same_message_id_in_two_orgs_is_two_events(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld
) -> None:
    body = event()
    assert client.post("/v1/events", json=body, headers=auth(org.ingest_key)).json()["accepted"] == 1
    assert client.post("/v1/events", json=body, headers=auth(other_org.ingest_key)).json()["accepted"] == 1


def test_a_batch_stores_its_valid_items_and_explains_the_rest(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    good = [event(), event(anonymous_id="anon-1", user_id=None)]
    batch = {
        "events": [
            good[0],
            {"event": "", "user_id": "u"},
            {"event": "x"},
            good[1],
            {"event": "x", "user_id": "u", "timestamp": "2026-01-01T00:00:00"},
            {"event": "x", "user_id": "u", "message_id": "m" * 129},
            {"event": "x", "user_id": "u", "properties": [1, 2]},
            {"event": "x", "user_id": "u", "surprise": True},
            "not an object",
            {"event": "x", "user_id": "u", "properties": {"blob": "y" * 40_000}, "message_id": "too-big"},
        ]
    }
    result = client.post("/v1/events/batch", json=batch, headers=auth(org.ingest_key)).json()
    assert result["accepted"] == 2 and result["duplicates"] == 0
    reasons = {r["index"]: r["error"] for r in result["rejected"]}
    assert sorted(reasons) == [1, 2, 4, 5, 6, 7, 8, 9]
    assert reasons[1].startswith("event:")
    assert reasons[2] == "user_id or anonymous_id is required"
    assert reasons[4].startswith("timestamp:")
    assert reasons[5].startswith("message_id:")
    assert reasons[6].startswith("properties:")
    assert "surprise" in reasons[7]
    assert "limit is 32768" in reasons[9]
    assert [r["message_id"] for r in result["rejected"] if r["index"] == 9] == [None]  # too big to read
    assert {r["message_id"] for r in stored(engine, org.id)} == {g["message_id"] for g in good}


def test_clock_skew_is_corrected_and_far_future_rejected(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    now = datetime.now(UTC)
    client_clock = now + timedelta(hours=3)  # the device's clock runs three hours fast
    skewed = event(
        timestamp=(client_clock - timedelta(seconds=30)).isoformat(), sent_at=client_clock.isoformat()
    )
    future = event(timestamp=(now + timedelta(hours=30)).isoformat())
    batch_skew = {
        "events": [event(timestamp=(client_clock - timedelta(minutes=5)).isoformat())],
        "sent_at": client_clock.isoformat(),
    }
    headers = auth(org.ingest_key)
    assert (
        client.post("/v1/events/batch", json={"events": [skewed, future]}, headers=headers).json()[
            "rejected"
        ][0]["index"]
        == 1
    )
    assert client.post("/v1/events/batch", json=batch_skew, headers=headers).json()["accepted"] == 1
    rows = {r["message_id"]: r for r in stored(engine, org.id)}
    row = rows[skewed["message_id"]]
    assert abs((row["received_at"] - row["timestamp"]).total_seconds() - 30) < 2
    row = rows[batch_skew["events"][0]["message_id"]]
    assert abs((row["received_at"] - row["timestamp"]).total_seconds() - 300) < 2
    response = client.post("/v1/events", json=future, headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "timestamp"
    overflow = event(timestamp="0001-01-01T00:00:00Z", sent_at="9999-12-31T00:00:00Z")
    response = client.post("/v1/events", json=overflow, headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "timestamp"


def test_platform_keys_name_live_orgs(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, staff_admin
) -> None:
    key = client.post("/v1/admin/ingest-keys", json={"name": "backend"}, headers=auth(staff_admin[1])).json()[
        "token"
    ]
    client.post(
        f"/v1/admin/orgs/{other_org.id}/suspend", json={"reason": "test"}, headers=auth(staff_admin[1])
    )
    batch = {
        "events": [event(org_id=org.id), event(), event(org_id=str(uuid.uuid4())), event(org_id=other_org.id)]
    }
    result = client.post("/v1/events/batch", json=batch, headers=auth(key)).json()
    assert result["accepted"] == 1
    assert [(r["index"], r["error"]) for r in result["rejected"]] == [
        (1, "org_id: required with a platform ingest key"),
        (2, "org_id: no such organization"),
        (3, "org_id: the organization is suspended"),
    ]
    assert len(stored(engine, org.id)) == 1 and stored(engine, other_org.id) == []


def test_an_org_key_never_writes_into_another_org(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld
) -> None:
    result = client.post(
        "/v1/events/batch", json={"events": [event(org_id=other_org.id)]}, headers=auth(org.ingest_key)
    ).json()
    assert result["accepted"] == 0 and "its own organization" in result["rejected"][0]["error"]
    assert stored(engine, other_org.id) == [] and stored(engine, org.id) == []


def test_credentials(client: httpx.Client, org: OrgWorld, staff_admin) -> None:
    assert client.post("/v1/events", json=event()).status_code == 401
    user = client.post("/v1/events", json=event(), headers=org.headers("owner"))
    assert user.status_code == 403 and "ingest key" in user.json()["detail"]
    client.delete(f"/v1/orgs/{org.id}/ingest-keys/{org.ingest_key_id}", headers=org.headers("owner"))
    revoked = client.post("/v1/events", json=event(), headers=auth(org.ingest_key))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def test_a_suspended_orgs_key_is_refused(client: httpx.Client, org: OrgWorld, staff_admin) -> None:
    client.post(f"/v1/admin/orgs/{org.id}/suspend", json={"reason": "test"}, headers=auth(staff_admin[1]))
    response = client.post("/v1/events", json=event(), headers=auth(org.ingest_key))
    assert response.status_code == 403 and "suspended" in response.json()["detail"]


def test_limits_and_encodings(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    headers = {**auth(org.ingest_key), "content-type": "application/json"}
    too_many = client.post(
        "/v1/events/batch", json={"events": [event() for _ in range(5001)]}, headers=headers
    )
    assert too_many.status_code == 413 and "5000" in too_many.json()["detail"]
    big_one = client.post("/v1/events", json=event(properties={"x": "y" * 33_000}), headers=headers)
    assert big_one.status_code == 413 and "32768" in big_one.json()["detail"]
    huge = (
        b'{"events": ['
        + b",".join(json.dumps(event(properties={"p": "z" * 30_000})).encode() for _ in range(180))
        + b"]}"
    )
    assert len(huge) > 5 * 1024 * 1024
    assert client.post("/v1/events/batch", content=huge, headers=headers).status_code == 413

    compressed = [event() for _ in range(50)]
    gz = client.post("/v1/events/batch", content=gzip.compress(json.dumps({"events": compressed}).encode()),
                     headers={**headers, "content-encoding": "gzip"})  # fmt: skip
    assert gz.json()["accepted"] == 50
    bomb = gzip.compress(b'{"events": [' + b" " * (50 * 1024 * 1024) + b"]}")
    assert len(bomb) < 100_000
    refused = client.post("/v1/events/batch", content=bomb, headers={**headers, "content-encoding": "gzip"})
    assert refused.status_code == 413 and "decompressed" in refused.json()["detail"]
    bad = client.post(
        "/v1/events/batch", content=b"\x1f\x8bnot gzip", headers={**headers, "content-encoding": "gzip"}
    )
    assert bad.status_code == 400 and "gzip" in bad.json()["detail"]
    br = client.post("/v1/events/batch", content=b"{}", headers={**headers, "content-encoding": "br"})
    assert br.status_code == 415
    assert len(stored(engine, org.id)) == 50


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b'{"events": {}}', 422),
        (b'{"events": []}', 200),
        (b'{"events": [], "x": 1}', 422),
        (b"[]", 422),
    ],
)
def test_malformed_batches(client: httpx.Client, org: OrgWorld, body: bytes, status: int) -> None:
    response = client.post(
        "/v1/events/batch", content=body, headers={**auth(org.ingest_key), "content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    if status != 200:
        assert response.headers["content-type"].startswith("application/problem+json")


def test_unstorable_text_is_rejected_not_a_500(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    batch = {"events": [event(event="nul\u0000name"), event(properties={"k": "nul\u0000value"}), event()]}
    result = client.post("/v1/events/batch", json=batch, headers=auth(org.ingest_key)).json()
    assert result["accepted"] == 1 and [r["index"] for r in result["rejected"]] == [0, 1]
    lone = b'{"events": [{"event": "x", "user_id": "\\ud800"}]}'
    response = client.post(
        "/v1/events/batch", content=lone, headers={**auth(org.ingest_key), "content-type": "application/json"}
    )
    assert response.status_code in (200, 400, 422) and response.status_code < 500


def test_rows_land_in_todays_partition(client: httpx.Client, engine: Engine, org: OrgWorld) -> None:
    client.post("/v1/events", json=event(), headers=auth(org.ingest_key))
    today = datetime.now(UTC).strftime("%Y%m%d")
    with engine.connect() as conn:
        where = conn.execute(
            text("SELECT tableoid::regclass::text FROM events WHERE organization_id = :o"), {"o": org.id}
        ).scalar()
        ahead = conn.execute(
            text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
        ).scalar()
    assert where == f"events_p{today}"
    assert ahead >= 7


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
event_like = st.dictionaries(
    st.sampled_from(
        [
            "event",
            "user_id",
            "anonymous_id",
            "message_id",
            "timestamp",
            "sent_at",
            "properties",
            "context",
            "org_id",
            "other",
        ]
    ),
    json_values | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=st.lists(event_like, max_size=5))
def test_fuzzed_events_never_cause_a_server_error(
    live_server, engine: Engine, fuzz_org: OrgWorld, items: list
) -> None:
    with httpx.Client(base_url=live_server.url) as client:
        response = client.post("/v1/events/batch", json={"events": items}, headers=auth(fuzz_org.ingest_key))
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["accepted"] + result["duplicates"] + len(result["rejected"]) == len(items)
        if items:
            single = client.post("/v1/events", json=items[0], headers=auth(fuzz_org.ingest_key))
            assert single.status_code in (200, 400, 413, 422), single.text


@pytest.fixture(scope="module")
def fuzz_org(live_server, engine: Engine) -> OrgWorld:
    from tests.harness import make_org

    with httpx.Client(base_url=live_server.url) as client:
        return make_org(client, engine, roles=("owner",))
