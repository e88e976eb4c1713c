"""Segment's official Node SDK (``@segment/analytics-node``, from ``tests/node/``) against a live
server: the same calls and checks as the Python SDK's in tests/test_segment.py, through a client
nobody here wrote, configured exactly as docs/api.md shows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.harness import LiveServer, auth, make_org
from tests.node_clients import run_node
from tests.test_segment import call_ids, check_landed

pytestmark = pytest.mark.api

LIBRARY = "@segment/analytics-node"


def every_call(*, user: str, group: str, at: datetime, ids: dict[str, str]) -> list[dict[str, Any]]:
    """The six calls, as the Node SDK's methods take them (one object each)."""
    context = {"groupId": group}  # names the org for a platform key, as on every non-group call
    when = at.isoformat()
    return [
        {"method": "identify", "args": {"userId": user, "traits": {"email": f"{user}@acme.example", "role": "admin"},
                                        "context": context, "timestamp": when, "messageId": ids["identify"]}},
        {"method": "group", "args": {"userId": user, "groupId": group, "traits": {"plan": "enterprise", "employees": 120},
                                     "timestamp": when, "messageId": ids["group"]}},
        {"method": "track", "args": {"userId": user, "event": "Report Exported", "properties": {"format": "pdf"},
                                     "context": context, "timestamp": when, "messageId": ids["track"]}},
        {"method": "page", "args": {"userId": user, "category": "Docs", "name": "Install",
                                    "properties": {"path": "/docs/install"}, "context": context, "timestamp": when,
                                    "messageId": ids["page"]}},
        {"method": "screen", "args": {"userId": user, "category": "Settings", "name": "Billing",
                                      "properties": {"tab": 2}, "context": context, "timestamp": when,
                                      "messageId": ids["screen"]}},
        {"method": "alias", "args": {"userId": user, "previousId": "anon-" + user, "context": context,
                                     "timestamp": when, "messageId": ids["alias"]}},
    ]  # fmt: skip


def send(live_server: LiveServer, key: str, calls: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    return run_node("segment-node.mjs", {"host": live_server.url, "writeKey": key, "calls": calls, **options})


def assert_no_sdk_error(report: dict[str, Any]) -> None:
    assert report["errors"] == [] and report["callbackErrors"] == [], report
    assert report["statuses"] and set(report["statuses"]) == {200}, report


def test_the_node_sdk_with_an_org_key_lands_every_call_once(
    client: httpx.Client, engine: Engine, live_server: LiveServer
) -> None:
    org = make_org(client, engine, roles=("owner",))
    external = f"acct-{org.slug}"
    patched = client.patch(f"/v1/orgs/{org.id}", json={"external_id": external}, headers=org.headers("owner"))
    assert patched.status_code == 200, patched.text
    at = datetime.now(UTC).replace(microsecond=0)
    ids = call_ids()

    report = send(live_server, org.ingest_key, every_call(user="ada", group=external, at=at, ids=ids))

    assert_no_sdk_error(report)
    check_landed(engine, org, user="ada", ids=ids, at=at, library=LIBRARY)
    shown = client.get(f"/v1/orgs/{org.id}", headers=org.headers("owner")).json()
    assert shown["traits"] == {"plan": "enterprise", "employees": 120}
    # The SDK retries nothing and sends nothing twice: a second run of the same messages stores none.
    again = send(live_server, org.ingest_key, every_call(user="ada", group=external, at=at, ids=ids))
    assert_no_sdk_error(again)
    check_landed(engine, org, user="ada", ids=ids, at=at, library=LIBRARY)


def test_the_node_sdk_with_a_platform_key_names_orgs_by_external_id(
    client: httpx.Client, engine: Engine, live_server: LiveServer, staff_admin: tuple[str, str]
) -> None:
    made = client.post("/v1/admin/ingest-keys", json={"name": "segment source"}, headers=auth(staff_admin[1]))
    assert made.status_code == 201, made.text
    at = datetime.now(UTC).replace(microsecond=0)
    calls: list[dict[str, Any]] = []
    sent = []
    for _ in range(2):
        org = make_org(client, engine, roles=("owner",))
        external = f"acct-{uuid.uuid4().hex[:8]}"
        patched = client.patch(
            f"/v1/orgs/{org.id}", json={"external_id": external}, headers=org.headers("owner")
        )
        assert patched.status_code == 200, patched.text
        ids = call_ids()
        calls += every_call(user=f"user-{external}", group=external, at=at, ids=ids)
        sent.append((org, external, ids))

    # Both orgs' calls in the same batches: the org of each message is its own groupId.
    report = send(live_server, made.json()["token"], calls, maxEventsInBatch=5)

    assert_no_sdk_error(report)
    assert len(report["statuses"]) >= 3  # 12 messages, 5 a batch
    for org, external, ids in sent:
        check_landed(engine, org, user=f"user-{external}", ids=ids, at=at, library=LIBRARY)
