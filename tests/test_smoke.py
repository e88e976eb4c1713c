import httpx

from tests.harness import OrgWorld


def test_health_and_ready_answer(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}


def test_org_world_has_every_role(client: httpx.Client, org: OrgWorld) -> None:
    members = client.get(f"/v1/orgs/{org.id}/members", headers=org.headers("viewer")).json()["items"]
    assert sorted(m["role"] for m in members) == ["admin", "billing", "member", "owner", "viewer"]
    assert {m["status"] for m in members} == {"active"}


def test_metrics_count_requests_and_events(client: httpx.Client, org: OrgWorld) -> None:
    from tests.harness import auth

    client.post("/v1/events", json={"event": "metrics.checked", "user_id": "u"}, headers=auth(org.ingest_key))
    body = client.get("/metrics").text
    assert "keel_events_accepted_total" in body
    accepted = next(
        float(line.split()[-1]) for line in body.splitlines() if line.startswith("keel_events_accepted_total")
    )
    assert accepted >= 1
    assert 'path="/v1/events"' in body  # request metrics are grouped by route template
