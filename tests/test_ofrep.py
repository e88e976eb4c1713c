"""OFREP against a live server, through a client nobody here wrote: the OpenFeature Python SDK
(``openfeature-sdk``) with its OFREP provider (``openfeature-provider-ofrep``); the bulk endpoint's
ETag/304 and the protocol's error shapes over plain HTTP."""

from __future__ import annotations

import httpx
import pytest
from openfeature import api as openfeature
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from sqlalchemy import Engine, text

from tests.harness import LiveServer, OrgWorld, auth, unique
from tests.test_flags import create_flag, eventually

BULK = "/ofrep/v1/evaluate/flags"


@pytest.fixture
def admin(staff_admin: tuple[str, str]) -> str:
    return staff_admin[1]


def sdk_client(live_server: LiveServer, token: str) -> OpenFeatureClient:
    """An OpenFeature client of its own (a domain per test) on the OFREP provider, bearer-authenticated."""
    domain = unique("keel")
    provider = OFREPProvider(live_server.url, headers_factory=lambda: {"Authorization": f"Bearer {token}"})
    openfeature.set_provider(provider, domain=domain)
    return openfeature.get_client(domain=domain)


def single(value: object) -> list[dict[str, object]]:
    return [{"name": "only", "weight": 1000, "value": value}]


def in_cache(client: httpx.Client, org: OrgWorld, key: str) -> None:
    eventually(
        lambda: (
            client.post(f"{BULK}/{key}", json={"context": {}}, headers=auth(org.ingest_key)).status_code
            == 200
        ),
        what="the flag reaches the cache",
    )


def test_the_openfeature_sdk_evaluates_every_type_and_sees_changes(
    client: httpx.Client, live_server: LiveServer, org: OrgWorld, admin: str
) -> None:
    on = create_flag(client, admin, rollout_percentage=100)["key"]
    colour = create_flag(client, admin, rollout_percentage=100, variants=single("blue"))["key"]
    ratio = create_flag(client, admin, rollout_percentage=100, variants=single(0.25))["key"]
    limit = create_flag(client, admin, rollout_percentage=100, variants=single(7))["key"]
    layout = create_flag(
        client, admin, rollout_percentage=100, variants=single({"layout": "new", "cols": 3})
    )["key"]
    in_cache(client, org, layout)
    sdk = sdk_client(live_server, org.ingest_key)
    context = EvaluationContext(targeting_key="end-user-1", attributes={"country": "NO"})

    details = sdk.get_boolean_details(on, False, context)
    assert (details.value, details.reason, details.variant, details.error_code) == (
        True,
        Reason.STATIC,
        "on",
        None,
    )
    assert sdk.get_string_value(colour, "red", context) == "blue"
    assert sdk.get_float_value(ratio, 1.0, context) == 0.25
    assert sdk.get_integer_value(limit, 0, context) == 7
    assert sdk.get_object_value(layout, {}, context) == {"layout": "new", "cols": 3}

    missing = sdk.get_boolean_details(unique("nope"), True, context)
    assert missing.error_code == ErrorCode.FLAG_NOT_FOUND and missing.value is True

    # A change reaches the provider within its polling interval: this provider asks on every call,
    # and the server's snapshot follows within its own 1 s refresh.
    assert (
        client.patch(f"/v1/admin/flags/{on}", json={"enabled": False}, headers=auth(admin)).status_code == 200
    )
    eventually(
        lambda: sdk.get_boolean_value(on, True, context) is False, what="the kill switch through OFREP"
    )
    assert sdk.get_boolean_details(on, True, context).reason == Reason.DISABLED


def test_rules_read_the_ofrep_context_and_the_org_is_named_by_external_id(
    client: httpx.Client, engine: Engine, live_server: LiveServer, org: OrgWorld, admin: str
) -> None:
    rule = {
        "name": "norway",
        "constraints": [{"field": "context.country", "operator": "IN", "values": ["NO"]}],
    }
    key = create_flag(client, admin, rules=[rule])["key"]
    by_user = create_flag(client, admin, rollout_percentage=50, stickiness="user")["key"]
    in_cache(client, org, key)
    external = unique("acct")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE organizations SET external_id = :e WHERE id = :o"), {"e": external, "o": org.id}
        )
    platform = client.post("/v1/admin/ingest-keys", json={"name": "ofrep"}, headers=auth(admin))
    assert platform.status_code == 201, platform.text
    sdk = sdk_client(live_server, platform.json()["token"])

    norway = EvaluationContext(targeting_key="u1", attributes={"groupId": external, "country": "NO"})
    sweden = EvaluationContext(targeting_key="u1", attributes={"groupId": external, "country": "SE"})
    hit = sdk.get_boolean_details(key, False, norway)
    assert (hit.value, hit.reason, hit.flag_metadata["rule"]) == (True, Reason.TARGETING_MATCH, "norway")
    assert sdk.get_boolean_details(key, True, sweden).value is False
    nameless = sdk.get_boolean_details(key, True, EvaluationContext(targeting_key="u1"))
    assert nameless.error_code == ErrorCode.INVALID_CONTEXT
    no_user = sdk.get_boolean_details(by_user, True, EvaluationContext(attributes={"org_id": org.id}))
    assert no_user.error_code == ErrorCode.TARGETING_KEY_MISSING

    # A member names the org; a member of another org is refused (403, OFREP's "forbidden").
    member = sdk_client(live_server, org.tokens["viewer"])
    assert member.get_boolean_value(key, False, EvaluationContext("u1", {"org_id": org.id, "country": "NO"}))
    stranger = client.post(f"{BULK}/{key}", json={"context": {"org_id": org.id}}, headers=auth(admin))
    assert stranger.status_code == 403


def test_bulk_answers_carry_an_etag_and_304_until_something_changes(
    client: httpx.Client, org: OrgWorld, admin: str
) -> None:
    key = create_flag(client, admin, rollout_percentage=100)["key"]
    in_cache(client, org, key)
    body = {"context": {"targetingKey": "u1"}}
    first = client.post(BULK, json=body, headers=auth(org.ingest_key))
    assert first.status_code == 200, first.text
    mine = next(f for f in first.json()["flags"] if f["key"] == key)
    assert mine == {"key": key, "value": True, "reason": "STATIC", "variant": "on",
                    "metadata": {"keel_reason": "rollout", "bucket": mine["metadata"]["bucket"]}}  # fmt: skip
    etag = first.headers["etag"]
    again = client.post(BULK, json=body, headers={**auth(org.ingest_key), "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert (
        client.patch(
            f"/v1/admin/flags/{key}", json={"rollout_percentage": 0}, headers=auth(admin)
        ).status_code
        == 200
    )

    def changed() -> bool:
        r = client.post(BULK, json=body, headers={**auth(org.ingest_key), "If-None-Match": etag})
        return r.status_code == 200 and r.headers["etag"] != etag

    eventually(changed, what="a new ETag once the flag changed")


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b'{"context": "not an object"}', "INVALID_CONTEXT"),
        (b'{"context": ["a"]}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 12}}', "INVALID_CONTEXT"),
        (b'{"context": {', "PARSE_ERROR"),
        (b"[1, 2]", "PARSE_ERROR"),
    ],
)
def test_bad_contexts_are_ofrep_400s(client: httpx.Client, org: OrgWorld, content: bytes, code: str) -> None:
    headers = {**auth(org.ingest_key), "Content-Type": "application/json"}
    for path in (BULK, f"{BULK}/any-flag"):
        response = client.post(path, content=content, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["errorCode"] == code and response.json()["errorDetails"]


def test_ofrep_needs_a_credential(client: httpx.Client) -> None:
    assert client.post(BULK, json={"context": {}}).status_code == 401
    assert client.post(f"{BULK}/x", json={"context": {}}, headers=auth("kl_not_a_token")).status_code == 401


def test_a_platform_key_cannot_evaluate_for_a_suspended_org(
    client: httpx.Client, org: OrgWorld, admin: str
) -> None:
    key = create_flag(client, admin, rollout_percentage=100)["key"]
    in_cache(client, org, key)
    platform = client.post("/v1/admin/ingest-keys", json={"name": "ofrep"}, headers=auth(admin)).json()[
        "token"
    ]
    body = {"context": {"org_id": org.id}}
    assert client.post(f"{BULK}/{key}", json=body, headers=auth(platform)).json()["value"] is True
    suspended = client.post(
        f"/v1/admin/orgs/{org.id}/suspend", json={"reason": "unpaid"}, headers=auth(admin)
    )
    assert suspended.status_code in (200, 201), suspended.text
    assert client.post(f"{BULK}/{key}", json=body, headers=auth(platform)).status_code == 403
