"""OpenFeature's official server SDK for Node (``@openfeature/server-sdk``) on its OFREP provider
(``@openfeature/ofrep-provider``), from ``tests/node/``, against a live server: the Node twin of
tests/test_ofrep.py's Python SDK test, configured exactly as docs/flags.md shows."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.harness import LiveServer, OrgWorld, auth, unique
from tests.node_clients import run_node
from tests.test_flags import create_flag
from tests.test_ofrep import in_cache, single

pytestmark = pytest.mark.api


def evaluate(
    live_server: LiveServer, token: str, context: dict[str, Any], evaluations: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    report = run_node(
        "openfeature-server.mjs",
        {"baseUrl": live_server.url, "token": token, "context": context, "evaluations": evaluations},
    )
    results: list[dict[str, Any]] = report["results"]
    return results


def test_the_node_openfeature_sdk_evaluates_every_type_and_names_a_missing_flag(
    client: httpx.Client, live_server: LiveServer, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    admin = staff_admin[1]
    on = create_flag(client, admin, rollout_percentage=100)["key"]
    colour = create_flag(client, admin, rollout_percentage=100, variants=single("blue"))["key"]
    ratio = create_flag(client, admin, rollout_percentage=100, variants=single(0.25))["key"]
    layout = create_flag(
        client, admin, rollout_percentage=100, variants=single({"layout": "new", "cols": 3})
    )["key"]
    off = create_flag(client, admin, enabled=False, rollout_percentage=100)["key"]
    in_cache(client, org, off)
    missing = unique("nope")

    boolean, string, number, obj, disabled, absent = evaluate(
        live_server,
        org.ingest_key,
        {"targetingKey": "end-user-1", "country": "NO"},
        [
            {"type": "boolean", "key": on, "default": False},
            {"type": "string", "key": colour, "default": "red"},
            {"type": "number", "key": ratio, "default": 1},
            {"type": "object", "key": layout, "default": {}},
            {"type": "boolean", "key": off, "default": True},
            {"type": "boolean", "key": missing, "default": True},
        ],
    )

    assert (boolean["value"], boolean["reason"], boolean["variant"], boolean["errorCode"]) == (
        True,
        "STATIC",
        "on",
        None,
    )
    assert boolean["flagMetadata"]["keel_reason"] == "rollout"
    assert (string["value"], string["variant"], string["errorCode"]) == ("blue", "only", None)
    assert (number["value"], number["errorCode"]) == (0.25, None)
    assert (obj["value"], obj["errorCode"]) == ({"layout": "new", "cols": 3}, None)
    assert (disabled["value"], disabled["reason"], disabled["errorCode"]) == (False, "DISABLED", None)
    assert (absent["value"], absent["reason"], absent["errorCode"]) == (True, "ERROR", "FLAG_NOT_FOUND")


def test_the_node_sdk_with_a_platform_key_names_the_org_by_external_id(
    client: httpx.Client, engine: Engine, live_server: LiveServer, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    admin = staff_admin[1]
    rule = {
        "name": "norway",
        "constraints": [{"field": "context.country", "operator": "IN", "values": ["NO"]}],
    }
    key = create_flag(client, admin, rules=[rule])["key"]
    in_cache(client, org, key)
    external = unique("acct")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE organizations SET external_id = :e WHERE id = :o"), {"e": external, "o": org.id}
        )
    platform = client.post("/v1/admin/ingest-keys", json={"name": "ofrep"}, headers=auth(admin))
    assert platform.status_code == 201, platform.text
    token = platform.json()["token"]

    (norway,) = evaluate(
        live_server, token, {"targetingKey": "u1", "groupId": external, "country": "NO"},
        [{"type": "boolean", "key": key, "default": False}],
    )  # fmt: skip
    (sweden,) = evaluate(
        live_server, token, {"targetingKey": "u1", "groupId": external, "country": "SE"},
        [{"type": "boolean", "key": key, "default": True}],
    )  # fmt: skip
    (nameless,) = evaluate(
        live_server, token, {"targetingKey": "u1"}, [{"type": "boolean", "key": key, "default": True}]
    )

    assert (norway["value"], norway["reason"], norway["flagMetadata"]["rule"]) == (
        True,
        "TARGETING_MATCH",
        "norway",
    )
    assert (sweden["value"], sweden["errorCode"]) == (False, None)
    assert (nameless["value"], nameless["errorCode"]) == (True, "INVALID_CONTEXT")
