from collections.abc import Iterator

import httpx
import pytest

from api.app import create_app
from api.settings import Settings, SettingsError, load_settings
from tests.harness import LiveServer, OrgWorld, auth
from tests.test_bad_input import assert_problem


def test_health_and_ready_answer(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}


def test_org_world_has_every_role(client: httpx.Client, org: OrgWorld) -> None:
    members = client.get(f"/v1/orgs/{org.id}/members", headers=org.headers("viewer")).json()["items"]
    assert sorted(m["role"] for m in members) == ["admin", "billing", "member", "owner", "viewer"]
    assert {m["status"] for m in members} == {"active"}


METRICS_TOKEN = "metrics-" + "s3cr3t" * 4


@pytest.fixture(scope="module")
def metrics_server(settings: Settings) -> Iterator[LiveServer]:
    """An API configured with a metrics token (the session's server has none)."""
    with LiveServer(create_app(settings.with_(metrics_token=METRICS_TOKEN))) as server:
        yield server


def test_metrics_count_requests_and_events(metrics_server: LiveServer, org: OrgWorld) -> None:
    with httpx.Client(base_url=metrics_server.url, timeout=30) as scraper:
        sent = scraper.post(
            "/v1/events", json={"event": "metrics.checked", "user_id": "u"}, headers=auth(org.ingest_key)
        )
        assert sent.status_code in (200, 202), sent.text
        response = scraper.get("/metrics", headers=auth(METRICS_TOKEN))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    body = response.text
    accepted = next(
        float(line.split()[-1]) for line in body.splitlines() if line.startswith("keel_events_accepted_total")
    )
    assert accepted >= 1
    assert 'path="/v1/events"' in body  # request metrics are grouped by route template


def test_metrics_are_served_only_to_the_bearer_of_the_metrics_token(
    metrics_server: LiveServer, client: httpx.Client, org: OrgWorld
) -> None:
    with httpx.Client(base_url=metrics_server.url, timeout=30) as scraper:
        for headers in ({}, auth("wrong-" + METRICS_TOKEN), auth(org.tokens["owner"]), auth(org.ingest_key),
                        {"Authorization": f"Basic {METRICS_TOKEN}"}):  # fmt: skip
            refused = assert_problem(scraper.get("/metrics", headers=headers), 401)
            assert "KEEL_METRICS_TOKEN" in refused["detail"] and "keel_" not in refused["detail"]
    # Without a configured token there is no /metrics at all: the same answer as an unknown route.
    for headers in ({}, auth(METRICS_TOKEN), auth(org.tokens["owner"])):
        missing = assert_problem(client.get("/metrics", headers=headers), 404)
        assert missing["detail"] == assert_problem(client.get("/no-such-route"), 404)["detail"]


def test_a_short_metrics_token_is_refused_at_startup() -> None:
    with pytest.raises(SettingsError, match="KEEL_METRICS_TOKEN must be at least 16 characters"):
        load_settings({"KEEL_METRICS_TOKEN": "metrics"}, env_file=None)
    assert load_settings({"KEEL_METRICS_TOKEN": METRICS_TOKEN}, env_file=None).metrics_token == METRICS_TOKEN
