"""Property-based fuzzing of the app's own OpenAPI document (schemathesis), as an owner and as staff.

The document is the app's own, so every route, present and future, is fuzzed: no 5xx, and every
answer matches the documented schema.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from sqlalchemy import Engine

from api.app import create_app
from api.auth.models import PlatformRole
from api.settings import Settings
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import LiveServer, auth, make_org, make_user
from warehouse.build import build_warehouse

# The document does not depend on the database; the calls go to the session's live server.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(database_url="postgresql://unused@/unused")).openapi_schema.to_schema()
)
# The persona's token is injected into every call, so the checks that remove or break auth, or
# expect unknown query parameters to be refused (HTTP APIs ignore them), do not apply.
INJECTED_AUTH_CHECKS = [checks.negative_data_rejection, checks.missing_required_header, checks.ignored_auth]
# Bodies that are valid only with a signature over them (Stripe's), which a fuzzer cannot make:
# a schema-valid body without one is rightly refused.
SIGNED_BODIES = {"/v1/webhooks/stripe"}
# Rules JSON Schema cannot state, by route: a schema-valid request that breaks one is rightly a 422
# naming the rule, so "schema-valid means accepted" does not hold there (every other check does).
RULES_THE_SCHEMA_CANNOT_STATE = {
    # `from` after `to`, or more than MAX_RANGE_DAYS between them (the route's description says so).
    "/v1/orgs/{org_id}/analytics/activity": "a range between two parameters",
    # A NUL anywhere inside a free-form JSON value, which Postgres's jsonb cannot store.
    "/v1/orgs/{org_id}/webhook-messages": "no NUL inside the payload",
    # A URL whose host resolves to a public address over https (api/egress.py), checked when it is set.
    "/v1/orgs/{org_id}/webhook-endpoints": "a public https URL",
    "/v1/orgs/{org_id}/webhook-endpoints/{endpoint_id}": "a public https URL",
    # Flag definitions: a constraint's operator decides how many values it takes and what they parse
    # as, variant weights add up to 1000, a rule names segments that exist.
    "/v1/admin/flags": "flag rules",
    "/v1/admin/flags/{key}": "flag rules",
    "/v1/admin/flags/{key}/schedules": "flag rules",
    "/v1/admin/segments": "flag rules",
    "/v1/admin/segments/{name}": "flag rules",
    "/v1/admin/flags/{key}/overrides/{org_id}": "a variant the flag has",
    # OFREP names the org in the body's context, which a member's token must do.
    "/ofrep/v1/evaluate/flags": "an org named in the context",
    "/ofrep/v1/evaluate/flags/{key}": "an org named in the context",
}
FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def personas(
    live_server: LiveServer, engine: Engine, database_url: str, app, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, str], str]]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url) as client:
        world = make_org(client, engine)
        client.post(
            "/v1/events", json={"event": "fuzz.ready", "user_id": "u"}, headers=auth(world.ingest_key)
        )
    # Analytics routes read the warehouse: build one, so they are fuzzed past "not built yet" (503).
    lake = Lake.open(str(tmp_path_factory.mktemp("fuzz-lake")))
    export_tasks.write_schemas(lake)
    for table in export_tasks.INCREMENTAL.values():
        export_tasks.export_table(database_url, lake, table)
    for snapshot in export_tasks.SNAPSHOTS.values():
        export_tasks.export_snapshot(database_url, lake, snapshot)
    build_warehouse(lake.url, app.state.settings.resolved_warehouse_path)
    _, admin = make_user(engine, platform_role=PlatformRole.admin)
    return {"owner": (world.headers("owner"), world.id), "platform admin": (auth(admin), world.id)}


def call_as(case, live_server: LiveServer, personas, persona: str) -> None:  # type: ignore[no-untyped-def]
    headers, org_id = personas[persona]
    if case.path_parameters and "org_id" in case.path_parameters:
        case.path_parameters["org_id"] = org_id  # reach past the tenant guard into the handlers
    excluded = list(INJECTED_AUTH_CHECKS)
    if case.path in SIGNED_BODIES or case.path in RULES_THE_SCHEMA_CANNOT_STATE:
        excluded.append(checks.positive_data_acceptance)
    case.call_and_validate(base_url=live_server.url, headers=headers, excluded_checks=excluded)


@schema.parametrize()
@FUZZ
def test_fuzz_as_org_owner(case, live_server, personas) -> None:  # type: ignore[no-untyped-def]
    call_as(case, live_server, personas, "owner")


@schema.parametrize()
@FUZZ
def test_fuzz_as_platform_admin(case, live_server, personas) -> None:  # type: ignore[no-untyped-def]
    call_as(case, live_server, personas, "platform admin")
