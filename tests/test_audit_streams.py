"""Audit log streams as a customer's SIEM sees them: a Splunk-HEC-compatible and a Datadog-compatible
receiver on loopback, moto's S3 server, and an https receiver checked with `standardwebhooks`;
the stream worker in-process on the session's Postgres."""

from __future__ import annotations

import gzip
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from sqlalchemy import Engine, text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.audit.streams.delivery import StreamConfig, StreamWorker, backoff
from api.settings import Settings
from tests.harness import OrgWorld, auth, free_port, make_org
from tests.receivers import Receiver, Reply, datadog_logs, hec_events, splunk_hec
from tests.test_audit_ingest import entry
from tests.test_bad_input import assert_problem

HEC_TOKEN = "0d1f2e3c-hec-token-5a6b"
DD_KEY = "dd0123456789abcdef0123456789abcd"
FAST = StreamConfig(request_timeout=2.0, lease_seconds=30, retry_base=0.05, s3_window=0.0)


@pytest.fixture
def stream_settings(hooks_settings: Settings) -> Settings:
    return hooks_settings.with_(audit_stream_retry_max_seconds=0.2)


@pytest.fixture
def world(hooks_client: httpx.Client, engine: Engine) -> OrgWorld:
    return make_org(hooks_client, engine, roles=("owner", "admin", "member"))


@pytest.fixture
def other(hooks_client: httpx.Client, engine: Engine) -> OrgWorld:
    return make_org(hooks_client, engine, roles=("owner",))


def create_stream(client: httpx.Client, world: OrgWorld, **fields: Any) -> dict[str, Any]:
    response = client.post(f"/v1/orgs/{world.id}/audit-streams", json=fields, headers=world.headers("admin"))
    assert response.status_code == 201, response.text
    return response.json()


def add_entries(client: httpx.Client, world: OrgWorld, n: int) -> None:
    for i in range(n):
        response = client.post(
            "/v1/audit-logs", json=entry(metadata={"i": i}), headers=auth(world.ingest_key)
        )
        assert response.status_code == 201, response.text


def chain(engine: Engine, org_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT seq, hash, prev_hash, action FROM audit_log WHERE chain_key = :k ORDER BY seq"),
            {"k": org_id},
        )
        return [dict(r._mapping) for r in rows]


async def drain(
    settings: Settings, org_id: str, config: StreamConfig = FAST, horizon: float = 5
) -> StreamWorker:
    async with StreamWorker(settings, config) as worker:
        await worker.run_until_idle(max_seconds=60, horizon=horizon, organization_id=uuid.UUID(org_id))
    return worker


def hec_received(receiver: Receiver) -> list[dict[str, Any]]:
    return [
        e
        for a in receiver.arrivals
        if a.path.endswith("/event") and a.headers.get("authorization") == f"Splunk {HEC_TOKEN}"
        for e in hec_events(a.body)
    ]


async def test_splunk_hec_gets_every_entry_in_order_and_nothing_of_another_org(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, other: OrgWorld, stream_settings: Settings
) -> None:
    with Receiver(splunk_hec(HEC_TOKEN)) as receiver:
        base = f"http://127.0.0.1:{receiver.port}"
        stream = create_stream(
            hooks_client, world, name="splunk", type="splunk_hec", url=base, token=HEC_TOKEN
        )
        assert stream["secret"] is None and stream["has_token"] is True and "token" not in stream
        add_entries(hooks_client, world, 30)
        add_entries(hooks_client, other, 5)
        await drain(stream_settings, world.id)
        await drain(stream_settings, other.id)
        events = hec_received(receiver)
    expected = chain(engine, world.id)
    assert [e["event"]["seq"] for e in events] == [r["seq"] for r in expected]
    assert [e["event"]["hash"] for e in events] == [r["hash"] for r in expected]
    assert all(e["event"]["prev_hash"] == r["prev_hash"] for e, r in zip(events, expected, strict=True))
    assert {e["sourcetype"] for e in events} == {"keel:audit"} and {e["host"] for e in events} == {"keel"}
    assert {e["source"] for e in events} == {f"keel:audit:{world.id}"}
    assert all(isinstance(e["time"], float | int) for e in events)
    assert all(e["event"]["chain_key"] == world.id for e in events)  # never the other org's
    assert len(receiver.arrivals) < len(events)  # batched
    shown = hooks_client.get(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}", headers=world.headers("owner")
    )
    assert shown.json()["lag_entries"] == 0 and shown.json()["delivered_seq"] == expected[-1]["seq"]
    assert shown.json()["last_success_at"] is not None and shown.json()["last_error"] is None


async def test_splunk_hec_gets_the_signed_checkpoints_in_seq_order_and_they_verify_with_pyjwt(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings
) -> None:
    from tests.test_audit_checkpoints import sign, verified

    with Receiver(splunk_hec(HEC_TOKEN)) as receiver:
        stream = create_stream(
            hooks_client,
            world,
            name="siem",
            type="splunk_hec",
            url=f"http://127.0.0.1:{receiver.port}",
            token=HEC_TOKEN,
        )
        add_entries(hooks_client, world, 4)
        signed = [sign(hooks_client, world)]
        add_entries(hooks_client, world, 3)
        signed.append(sign(hooks_client, world))
        add_entries(hooks_client, world, 2)
        # Small batches: a checkpoint lands at a batch's edge as well as inside one.
        await drain(stream_settings, world.id, StreamConfig(batch_size=3, retry_base=0.05, s3_window=0.0))
        # Signed after its entry went out: the stream is due again for the checkpoint alone.
        signed.append(sign(hooks_client, world))
        await drain(stream_settings, world.id)
        events = hec_received(receiver)
    expected = chain(engine, world.id)
    assert [c["seq"] for c in signed] == sorted({c["seq"] for c in signed}) and len(signed) == 3
    order = [("entry", r["seq"]) for r in expected]
    for c in signed:  # each right after the entry it signs
        order.insert(order.index(("entry", c["seq"])) + 1, ("checkpoint", c["seq"]))
    assert [(e["event"]["kind"], e["event"]["seq"]) for e in events] == order
    received = [e["event"] for e in events if e["event"]["kind"] == "checkpoint"]
    by_seq = {r["seq"]: r["hash"] for r in expected}
    for got, made in zip(received, signed, strict=True):
        assert got["jws"] == made["jws"] and got["chain"] == world.id
        payload = verified(hooks_client, got["jws"])  # PyJWT, from /.well-known/keel-audit-keys.json
        assert (payload["chain"], payload["seq"], payload["hash"]) == (world.id, got["seq"], got["hash"])
        assert payload["hash"] == by_seq[payload["seq"]]  # the hash is on the chain the stream carried
    shown = hooks_client.get(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}", headers=world.headers("owner")
    ).json()
    assert shown["delivered_seq"] == expected[-1]["seq"]
    assert shown["delivered_checkpoint_seq"] == signed[-1]["seq"]
    # Nothing left: delivered once, and a worker's round does not take the stream again (its
    # receiver is gone: a claim would fail and show the error). Other tests' streams it may deliver.
    async with StreamWorker(stream_settings, FAST) as worker:
        await worker.tick()
    again = hooks_client.get(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}", headers=world.headers("owner")
    ).json()
    assert again == shown and again["last_error"] is None


async def test_a_receiver_that_fails_then_recovers_gets_everything_in_order(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings
) -> None:
    # 500s, then a timeout (the reply comes after the request timeout), then a 503, then fine.
    failures = {
        0: Reply(500, b'{"text":"Internal","code":8}'),
        1: Reply(200, b"{}", delay=5),
        2: Reply(503, b'{"text":"Server is busy","code":9}'),
    }
    with Receiver(splunk_hec(HEC_TOKEN, fail=failures.get)) as receiver:
        create_stream(
            hooks_client,
            world,
            name="flaky",
            type="splunk_hec",
            url=f"http://127.0.0.1:{receiver.port}",
            token=HEC_TOKEN,
        )
        add_entries(hooks_client, world, 12)
        worker = await drain(stream_settings, world.id)
        accepted = [
            e for n, a in enumerate(receiver.arrivals) if n not in failures for e in hec_events(a.body)
        ]
    assert worker.stats.failures >= 3  # (a loaded machine may time out a request more)
    assert any(err.startswith("timeout") for err in worker.stats.errors)
    seqs = [e["event"]["seq"] for e in accepted]
    # None lost, none out of order: at least once, so a batch whose answer was lost may come again,
    # but only as a repeat from the last acknowledged position, never ahead of a missing entry.
    firsts = list(dict.fromkeys(seqs))
    assert firsts == [r["seq"] for r in chain(engine, world.id)]
    assert all(b <= a + 1 for a, b in itertools.pairwise(seqs))
    with engine.connect() as conn:
        events = conn.execute(
            text(
                "SELECT event_type, payload FROM webhook_messages WHERE organization_id = :o ORDER BY created_at"
            ),
            {"o": world.id},
        ).all()
    assert [t for t, _ in events] == ["audit_stream.failing"]  # once per run of failures
    assert events[0][1]["name"] == "flaky" and "HTTP 500" in events[0][1]["error"]


@pytest.fixture(scope="module")
def ocsf_validators() -> dict[int, jsonschema.protocols.Validator]:
    """OCSF's published schema (1.5.0, the packaged export of schema.ocsf.io) for Keel's two classes."""
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

    from api.audit.streams.formats import ENTITY_MANAGEMENT, GROUP_MANAGEMENT, OCSF_VERSION

    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))
    out = {}
    for uid in (ENTITY_MANAGEMENT, GROUP_MANAGEMENT):
        class_schema = schema.get_class_schema(schema.lookup_class_name_from_uid(class_uid=uid), [])
        validator_cls = jsonschema.validators.validator_for(class_schema)
        validator_cls.check_schema(class_schema)
        out[uid] = validator_cls(class_schema, format_checker=validator_cls.FORMAT_CHECKER)
    return out


async def test_datadog_gets_ocsf_that_validates_against_the_ocsf_schema(
    hooks_client: httpx.Client,
    engine: Engine,
    stream_settings: Settings,
    ocsf_validators: dict[int, jsonschema.protocols.Validator],
) -> None:
    # Members invited over HTTP: the chain holds member.* entries (Group Management) and org.*,
    # ingest_key.* and product entries (Entity Management).
    world = make_org(hooks_client, engine, roles=("owner", "admin"), invite_through_api=True)
    with Receiver(datadog_logs(DD_KEY)) as receiver:
        create_stream(
            hooks_client,
            world,
            name="dd",
            type="datadog",
            url=f"http://127.0.0.1:{receiver.port}",
            token=DD_KEY,
            format="ocsf",
        )
        add_entries(hooks_client, world, 3)
        await drain(stream_settings, world.id)
        arrivals = list(receiver.arrivals)
    assert arrivals and all(a.headers["dd-api-key"] == DD_KEY for a in arrivals)
    logs = [log for a in arrivals for log in json.loads(a.body)]
    assert {(x["ddsource"], x["service"]) for x in logs} == {("keel", "keel-audit")}
    assert all(f"org_id:{world.id}" in x["ddtags"].split(",") for x in logs)
    events = [json.loads(x["message"]) for x in logs]
    expected = chain(engine, world.id)
    assert [e["unmapped"]["keel"]["seq"] for e in events] == [r["seq"] for r in expected]
    assert [e["unmapped"]["keel"]["hash"] for e in events] == [r["hash"] for r in expected]
    classes = {e["class_uid"] for e in events}
    assert classes == {3004, 3006}, classes
    for event in events:
        errors = sorted(ocsf_validators[event["class_uid"]].iter_errors(event), key=str)
        assert not errors, (event, [e.message for e in errors])
    joined = [e for e in events if e["message"] == "member.joined"]
    assert joined and joined[0]["activity_id"] == 3 and joined[0]["type_uid"] == 300603


def test_the_ocsf_schema_refuses_what_it_should(
    ocsf_validators: dict[int, jsonschema.protocols.Validator],
) -> None:
    """The validation above can fail: an event missing a required attribute does not validate."""
    from api.audit.streams.formats import StreamItem, ocsf

    body = {
        "id": str(uuid.uuid4()),
        "chain_key": "c",
        "seq": 1,
        "organization_id": None,
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "actor_type": "user",
        "actor_id": "u",
        "actor_name": "U",
        "action": "document.shared",
        "resource_type": "document",
        "resource_id": "d",
        "metadata": {},
        "ip": None,
        "user_agent": None,
        "request_id": None,
        "source": "product",
        "targets": [],
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    event = ocsf(StreamItem("entry", 1, body))
    assert ocsf_validators[3004].is_valid(event)
    del event["entity"]
    assert not ocsf_validators[3004].is_valid(event)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


async def test_s3_objects_in_name_order_are_seq_order(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings, s3_endpoint: str
) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAKEELTEST",
        aws_secret_access_key="keel-secret",
    )
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    create_stream(
        hooks_client,
        world,
        name="bucket",
        type="s3",
        url=f"{s3_endpoint}/{bucket}/keel",
        token="AKIAKEELTEST:keel-secret",
    )
    add_entries(hooks_client, world, 5)
    await drain(stream_settings, world.id, StreamConfig(batch_size=3, retry_base=0.05, s3_window=0.0))
    add_entries(hooks_client, world, 4)
    await drain(stream_settings, world.id, StreamConfig(batch_size=3, retry_base=0.05, s3_window=0.0))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"keel/{world.id}/")["Contents"]]
    assert len(keys) >= 3 and keys == sorted(keys)
    lines = []
    for key in keys:
        assert key.endswith(".jsonl.gz")
        body = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        lines += [json.loads(line) for line in body.splitlines()]
    assert [x["seq"] for x in lines] == [r["seq"] for r in chain(engine, world.id)]
    assert all(x["kind"] == "entry" and x["chain_key"] == world.id for x in lines)


async def test_s3_keeps_an_entry_and_the_checkpoint_of_its_seq_in_two_objects(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings, s3_endpoint: str
) -> None:
    import boto3

    from tests.test_audit_checkpoints import sign

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAKEELTEST",
        aws_secret_access_key="keel-secret",
    )
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    create_stream(
        hooks_client, world, name="bucket", type="s3", url=f"{s3_endpoint}/{bucket}",
        token="AKIAKEELTEST:keel-secret",
    )  # fmt: skip
    one_each = StreamConfig(batch_size=1, retry_base=0.05, s3_window=0.0)
    add_entries(hooks_client, world, 2)
    await drain(stream_settings, world.id, one_each)  # one object per entry: …-<n>-<n>.jsonl.gz
    # The head, already in its own object, is signed: its checkpoint must not overwrite that object.
    checkpoint = sign(hooks_client, world)
    await drain(stream_settings, world.id, one_each)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{world.id}/")["Contents"]]
    assert keys == sorted(keys)
    items = [
        json.loads(line)
        for key in keys
        for line in gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).splitlines()
    ]
    expected = [("entry", r["seq"]) for r in chain(engine, world.id)] + [("checkpoint", checkpoint["seq"])]
    assert [(x["kind"], x["seq"]) for x in items] == expected
    assert keys[-1].endswith(f"{checkpoint['seq']:020d}-{checkpoint['seq']:020d}c.jsonl.gz")
    assert items[-1]["jws"] == checkpoint["jws"]


async def test_an_https_stream_is_signed_as_webhooks_are(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings
) -> None:
    with Receiver() as receiver:
        stream = create_stream(
            hooks_client, world, name="hook", type="https", url=receiver.url, token="bearer-token-1"
        )
        assert stream["secret"].startswith("whsec_")
        add_entries(hooks_client, world, 4)
        await drain(stream_settings, world.id)
        arrivals = list(receiver.arrivals)
    lines = []
    for arrival in arrivals:
        assert signed(stream["secret"], arrival.body, arrival.headers)
        assert not signed(stream["secret"], arrival.body + b"{}", arrival.headers)
        assert arrival.headers["authorization"] == "Bearer bearer-token-1"
        lines += [json.loads(line) for line in arrival.body.splitlines()]
    assert [x["seq"] for x in lines] == [r["seq"] for r in chain(engine, world.id)]
    # The secret is shown once: never in a later answer, never in clear in the database.
    shown = hooks_client.get(f"/v1/orgs/{world.id}/audit-streams", headers=world.headers("owner")).json()
    assert "secret" not in shown["items"][0]
    with engine.connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM audit_streams WHERE id = :i"), {"i": stream["id"]})
            .one()
            ._mapping
        )
    stored = json.dumps({k: v.hex() if isinstance(v, bytes) else str(v) for k, v in row.items()})
    assert "bearer-token-1" not in stored and stream["secret"] not in stored
    assert b"bearer-token-1" not in bytes(row["token_ciphertext"])


def signed(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """The `standardwebhooks` check; it parses the body as one JSON document after the signature
    passed, which JSON lines are not: a decoding error there means the signature was good."""
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    except json.JSONDecodeError:
        return True
    return True


async def test_a_stream_failing_for_seven_days_is_disabled_with_the_reason(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings
) -> None:
    with Receiver(splunk_hec("another-token")) as receiver:  # every request: 403
        stream = create_stream(
            hooks_client,
            world,
            name="dead",
            type="splunk_hec",
            url=f"http://127.0.0.1:{receiver.port}",
            token=HEC_TOKEN,
        )
        await drain(stream_settings, world.id, horizon=0)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE audit_streams SET failing_since = now() - interval '8 days', "
                    "next_attempt_at = now() WHERE id = :i"
                ),
                {"i": stream["id"]},
            )
        await drain(stream_settings, world.id, horizon=0)
    shown = hooks_client.get(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}", headers=world.headers("admin")
    ).json()
    assert shown["status"] == "disabled" and "HTTP 403" in shown["disabled_reason"]
    assert shown["lag_entries"] > 0 and "Invalid token" in shown["last_error"]
    with engine.connect() as conn:
        types = (
            conn.execute(
                text(
                    "SELECT event_type FROM webhook_messages WHERE organization_id = :o ORDER BY created_at"
                ),
                {"o": world.id},
            )
            .scalars()
            .all()
        )
        actions = (
            conn.execute(
                text("SELECT action FROM audit_log WHERE chain_key = :o ORDER BY seq"), {"o": world.id}
            )
            .scalars()
            .all()
        )
    assert types == ["audit_stream.failing", "audit_stream.disabled"]
    assert actions[-1] == "audit_stream.disabled"
    resumed = hooks_client.post(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}/resume", headers=world.headers("owner")
    )
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, base=1, cap=300) for n in (1, 2, 3, 9, 10, 50)] == [1, 2, 4, 256, 300, 300]


async def test_workers_share_streams_without_reordering_one(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings
) -> None:
    """Two workers at once: one lease per stream, so each stream's deliveries never overlap."""
    import asyncio

    with Receiver(splunk_hec(HEC_TOKEN)) as receiver:
        create_stream(
            hooks_client,
            world,
            name="shared",
            type="splunk_hec",
            url=f"http://127.0.0.1:{receiver.port}",
            token=HEC_TOKEN,
        )
        add_entries(hooks_client, world, 40)
        config = StreamConfig(batch_size=5, retry_base=0.05)
        async with StreamWorker(stream_settings, config) as a, StreamWorker(stream_settings, config) as b:
            org = uuid.UUID(world.id)
            await asyncio.gather(
                a.run_until_idle(organization_id=org, horizon=1),
                b.run_until_idle(organization_id=org, horizon=1),
            )
        events = hec_received(receiver)
    assert receiver.max_in_progress == 1
    assert [e["event"]["seq"] for e in events] == [r["seq"] for r in chain(engine, world.id)]


def test_bad_streams_are_refused_precisely(
    client: httpx.Client, hooks_client: httpx.Client, engine: Engine
) -> None:
    world = make_org(client, engine, roles=("owner", "admin", "member"))
    path = f"/v1/orgs/{world.id}/audit-streams"
    good = {"name": "s", "type": "splunk_hec", "url": "https://splunk.example.com:8088", "token": HEC_TOKEN}
    assert_problem(
        client.post(path, json={**good, "type": "syslog"}, headers=world.headers("owner")), 422, "type"
    )
    assert_problem(
        client.post(path, json={**good, "url": "https://127.0.0.1:8088"}, headers=world.headers("owner")),
        422,
        "url",
    )
    assert_problem(
        client.post(path, json={**good, "url": "https://10.1.2.3/"}, headers=world.headers("owner")), 422
    )
    assert_problem(
        client.post(
            path, json={k: v for k, v in good.items() if k != "token"}, headers=world.headers("owner")
        ),
        422,
        "token",
    )
    assert_problem(
        client.post(
            path,
            json={**good, "type": "s3", "url": "https://s3.example.com/b", "token": "nocolon"},
            headers=world.headers("owner"),
        ),
        422,
        "token",
    )
    assert_problem(
        client.post(
            path,
            json={**good, "type": "s3", "url": "https://s3.example.com/"},
            headers=world.headers("owner"),
        ),
        422,
        "url",
    )
    assert_problem(
        client.post(path, json={**good, "format": "cef"}, headers=world.headers("owner")), 422, "format"
    )
    assert_problem(client.post(path, json={**good, "extra": 1}, headers=world.headers("owner")), 422, "extra")
    assert_problem(client.post(path, json=good, headers=world.headers("member")), 403)
    created = client.post(path, json=good, headers=world.headers("owner"))
    assert created.status_code == 201, created.text
    assert_problem(client.post(path, json=good, headers=world.headers("owner")), 409)
    stream = f"{path}/{created.json()['id']}"
    assert_problem(client.post(f"{stream}/resume", headers=world.headers("owner")), 409)
    assert client.post(f"{stream}/pause", headers=world.headers("owner")).json()["status"] == "paused"
    assert_problem(client.post(f"{stream}/pause", headers=world.headers("owner")), 409)
    assert_problem(
        client.patch(stream, json={"url": "http://splunk.example.com"}, headers=world.headers("owner")),
        422,
        "url",
    )
    assert client.patch(stream, json={"name": "t"}, headers=world.headers("owner")).json()["name"] == "t"
    assert_problem(client.get(f"{path}/{uuid.uuid4()}", headers=world.headers("owner")), 404)
    assert client.delete(stream, headers=world.headers("owner")).status_code == 204
    assert_problem(client.get(stream, headers=world.headers("owner")), 404)


def test_the_test_button_sends_one_item(hooks_client: httpx.Client, engine: Engine, world: OrgWorld) -> None:
    with Receiver(splunk_hec(HEC_TOKEN)) as receiver:
        stream = create_stream(
            hooks_client,
            world,
            name="t",
            type="splunk_hec",
            url=f"http://127.0.0.1:{receiver.port}",
            token=HEC_TOKEN,
            format="ocsf",
        )
        tested = hooks_client.post(
            f"/v1/orgs/{world.id}/audit-streams/{stream['id']}/test", headers=world.headers("owner")
        )
        assert tested.status_code == 200 and tested.json() == {"ok": True, "status_code": 200, "error": None}
        (event,) = hec_events(receiver.arrivals[0].body)
    assert event["sourcetype"] == "ocsf" and event["event"]["unmapped"]["keel"]["kind"] == "test"
    bad = hooks_client.patch(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}",
        json={"url": f"http://127.0.0.1:{free_port()}"},
        headers=world.headers("owner"),
    )
    assert bad.status_code == 200
    failed = hooks_client.post(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}/test", headers=world.headers("owner")
    ).json()
    assert failed["ok"] is False and failed["error"].startswith("connection")


def test_credentials_are_sealed_under_the_key_and_bound_to_their_stream(tmp_path: Path) -> None:
    from api.audit.streams.secrets import KEY_FILE, Sealer, stream_key
    from api.settings import SettingsError

    settings = Settings(data_dir=tmp_path)
    key = stream_key(settings)  # generated once into the data dir, owner-only
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600 and stream_key(settings) == key
    sealer, a, b = Sealer(key), uuid.uuid4(), uuid.uuid4()
    sealed = sealer.seal(a, "hec-secret")
    assert b"hec-secret" not in sealed and sealer.open(a, sealed) == "hec-secret"
    with pytest.raises(ValueError, match="does not open"):
        sealer.open(b, sealed)  # copied onto another stream
    with pytest.raises(ValueError, match="does not open"):
        Sealer(stream_key(Settings(data_dir=tmp_path / "other"))).open(a, sealed)  # another key
    with pytest.raises(SettingsError, match="32 bytes"):
        stream_key(Settings(audit_stream_key="dG9vIHNob3J0"))


async def test_a_destination_is_checked_again_at_every_connection(
    hooks_client: httpx.Client, engine: Engine, world: OrgWorld, stream_settings: Settings
) -> None:
    """Created while private targets were allowed; a worker that refuses them never connects."""
    with Receiver(splunk_hec(HEC_TOKEN)) as receiver:
        stream = create_stream(hooks_client, world, name="inward", type="splunk_hec",
                               url=f"http://127.0.0.1:{receiver.port}", token=HEC_TOKEN)  # fmt: skip
        strict = stream_settings.with_(webhook_allow_private_targets=False)
        await drain(strict, world.id, horizon=0)
        assert receiver.arrivals == []
    shown = hooks_client.get(
        f"/v1/orgs/{world.id}/audit-streams/{stream['id']}", headers=world.headers("owner")
    )
    assert shown.json()["last_error"].startswith("ssrf_blocked") and shown.json()["delivered_seq"] == 0
