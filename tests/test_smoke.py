import httpx

from tests.harness import OrgWorld


def test_health_and_ready_answer(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}


def test_org_world_has_every_role(client: httpx.Client, org: OrgWorld) -> None:
    members = client.get(f"/v1/orgs/{org.id}/members", headers=org.headers("viewer")).json()["items"]
    assert sorted(m["role"] for m in members) == ["admin", "billing", "member", "owner", "viewer"]
    assert {m["status"] for m in members} == {"active"}
