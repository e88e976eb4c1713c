"""Feature flags over HTTP: definitions, overrides, evaluation, propagation between processes, CLI."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, insert, text

from api.app import create_app
from api.auth import cache
from api.auth.models import PlatformRole
from api.db.base import new_id
from api.db.engine import make_async_engine
from api.errors import ServiceUnavailable
from api.flags.evaluation import bucket
from api.flags.models import FeatureFlag
from api.flags.store import FlagStore
from api.settings import Settings
from tests.harness import LiveServer, OrgWorld, audit_rows, auth, make_org, make_user, unique
from tests.test_bad_input import assert_problem
from tests.test_cli import keel

#: The promise: a change reaches every API process within this many seconds.
PROPAGATION_BOUND = 2.0
#: Not a timing claim: how long to wait for something that is not time-bound before calling it stuck.
HANG_GUARD = 30.0
#: What a check may take beyond a cache's promised bound: the requests that observe it.
REQUEST_SLACK = 1.0


def eventually(check: Callable[[], bool], *, what: str, within: float = PROPAGATION_BOUND) -> None:
    """Poll ``check`` until it holds; fail if it still does not at the deadline."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.02)


def create_flag(client: httpx.Client, admin_token: str, **fields: object) -> dict:
    body = {"key": unique("flag"), **fields}
    response = client.post("/v1/admin/flags", json=body, headers=auth(admin_token))
    assert response.status_code == 201, response.text
    return response.json()


def evaluated(client: httpx.Client, headers: dict[str, str], **params: str) -> dict[str, bool]:
    response = client.get("/v1/flags/evaluate", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["flags"]


@pytest.fixture
def admin(staff_admin: tuple[str, str]) -> str:
    return staff_admin[1]


# --- definitions ---------------------------------------------------------------------------------


def test_admin_creates_reads_changes_and_archives_a_flag(
    client: httpx.Client, engine: Engine, staff_admin: tuple[str, str]
) -> None:
    admin_id, admin = staff_admin
    created = create_flag(client, admin, description="New billing page", rollout_percentage=5)
    key = created["key"]
    assert created["enabled"] is True and created["stickiness"] == "org" and created["archived"] is False
    assert created["created_by"] == admin_id == created["updated_by"]

    changed = client.patch(
        f"/v1/admin/flags/{key}", json={"rollout_percentage": 25, "stickiness": "user"}, headers=auth(admin)
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["rollout_percentage"] == 25 and changed.json()["stickiness"] == "user"

    detail = client.get(f"/v1/admin/flags/{key}", headers=auth(admin)).json()
    assert detail["rollout_percentage"] == 25 and detail["overrides"] == []
    listed = client.get("/v1/admin/flags", params={"limit": 200}, headers=auth(admin))
    assert listed.status_code == 200

    assert client.delete(f"/v1/admin/flags/{key}", headers=auth(admin)).status_code == 204
    archived = client.get(f"/v1/admin/flags/{key}", headers=auth(admin)).json()
    assert archived["archived"] is True and archived["archived_at"]
    # Archiving twice changes nothing and records nothing more.
    assert client.delete(f"/v1/admin/flags/{key}", headers=auth(admin)).status_code == 204
    # The key stays taken: the archived flag's history is kept.
    again = client.post("/v1/admin/flags", json={"key": key}, headers=auth(admin))
    assert "archived" in assert_problem(again, 409, "key")["detail"]
    restored = client.patch(f"/v1/admin/flags/{key}", json={"archived": False}, headers=auth(admin))
    assert restored.json()["archived"] is False

    rows = audit_rows(engine, resource_id=key)
    assert [r["action"] for r in rows] == ["flag.created", "flag.updated", "flag.archived", "flag.restored"]
    assert all(r["organization_id"] is None and r["actor_type"] == "staff" for r in rows)
    assert all(r["actor_id"] == admin_id for r in rows)
    updated = rows[1]["metadata"]
    assert updated["before"]["rollout_percentage"] == 5 and updated["after"]["rollout_percentage"] == 25
    assert updated["before"]["stickiness"] == "org" and updated["after"]["stickiness"] == "user"
    assert (
        rows[2]["metadata"]["before"]["archived"] is False
        and rows[2]["metadata"]["after"]["archived"] is True
    )


def test_list_pages_and_hides_archived_flags_unless_asked(client: httpx.Client, admin: str) -> None:
    live = create_flag(client, admin)["key"]
    gone = create_flag(client, admin)["key"]
    client.delete(f"/v1/admin/flags/{gone}", headers=auth(admin))

    def all_keys(**params: object) -> list[str]:
        keys, cursor = [], None
        while True:
            page = client.get(
                "/v1/admin/flags", params={"limit": 2, **params, **({"cursor": cursor} if cursor else {})},
                headers=auth(admin),
            ).json()  # fmt: skip
            keys += [f["key"] for f in page["items"]]
            if not (cursor := page["next_cursor"]):
                return keys

    default = all_keys()
    assert live in default and gone not in default and len(default) == len(set(default))
    assert gone in all_keys(include_archived="true")


def test_an_override_is_audited_in_the_orgs_chain(
    client: httpx.Client, engine: Engine, org: OrgWorld, staff_admin: tuple[str, str]
) -> None:
    admin_id, admin = staff_admin
    key = create_flag(client, admin)["key"]
    url = f"/v1/admin/flags/{key}/overrides/{org.id}"
    put = client.put(url, json={"enabled": True, "reason": "design partner"}, headers=auth(admin))
    assert put.status_code == 200, put.text
    assert put.json()["enabled"] is True and put.json()["organization_id"] == org.id
    # The same values again change nothing; new values are a change.
    client.put(url, json={"enabled": True, "reason": "design partner"}, headers=auth(admin))
    client.put(url, json={"enabled": False, "reason": "asked to wait"}, headers=auth(admin))

    detail = client.get(f"/v1/admin/flags/{key}", headers=auth(admin)).json()
    (override,) = detail["overrides"]
    assert override["enabled"] is False and override["reason"] == "asked to wait"
    assert override["organization_name"].startswith("Org ")

    assert client.delete(url, headers=auth(admin)).status_code == 204
    assert_problem(client.delete(url, headers=auth(admin)), 404)

    rows = [r for r in audit_rows(engine, organization_id=org.id) if r["action"].startswith("flag.")]
    assert [r["action"] for r in rows] == ["flag.override_set", "flag.override_set", "flag.override_removed"]
    assert all(
        r["chain_key"] == org.id and r["actor_type"] == "staff" and r["actor_id"] == admin_id for r in rows
    )
    assert "before" not in rows[0]["metadata"]
    assert rows[0]["metadata"]["after"] == {"enabled": True, "reason": "design partner"}
    assert rows[1]["metadata"]["before"] == {"enabled": True, "reason": "design partner"}
    assert rows[1]["metadata"]["after"] == {"enabled": False, "reason": "asked to wait"}
    assert rows[2]["metadata"]["before"] == {"enabled": False, "reason": "asked to wait"}


def test_support_reads_flags_and_nobody_but_admins_changes_them(
    client: httpx.Client, org: OrgWorld, admin: str, staff_support: tuple[str, str]
) -> None:
    key = create_flag(client, admin)["key"]
    support = auth(staff_support[1])
    assert client.get("/v1/admin/flags", headers=support).status_code == 200
    assert client.get(f"/v1/admin/flags/{key}", headers=support).status_code == 200
    override = f"/v1/admin/flags/{key}/overrides/{org.id}"
    for headers in (support, org.headers("owner"), auth(org.ingest_key)):
        assert_problem(client.post("/v1/admin/flags", json={"key": unique("no")}, headers=headers), 403)
        assert_problem(client.patch(f"/v1/admin/flags/{key}", json={"enabled": False}, headers=headers), 403)
        assert_problem(client.delete(f"/v1/admin/flags/{key}", headers=headers), 403)
        assert_problem(client.put(override, json={"enabled": True, "reason": "r"}, headers=headers), 403)
        assert_problem(client.delete(override, headers=headers), 403)
    for headers in (org.headers("owner"), auth(org.ingest_key)):
        assert_problem(client.get("/v1/admin/flags", headers=headers), 403)
        assert_problem(client.get(f"/v1/admin/flags/{key}", headers=headers), 403)
    detail = client.get(f"/v1/admin/flags/{key}", headers=auth(admin)).json()
    assert detail["enabled"] is True and detail["overrides"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "key"),
        ({"key": ""}, "key"),
        ({"key": "has space"}, "key"),
        ({"key": "slash/inside"}, "key"),
        ({"key": "ü-umlaut"}, "key"),
        ({"key": "x" * 101}, "key"),
        ({"key": ".."}, "key"),
        ({"key": "ok.key", "rollout_percentage": 101}, "rollout_percentage"),
        ({"key": "ok.key", "rollout_percentage": -1}, "rollout_percentage"),
        ({"key": "ok.key", "rollout_percentage": "ten"}, "rollout_percentage"),
        ({"key": "ok.key", "rollout_percentage": 12.5}, "rollout_percentage"),
        ({"key": "ok.key", "stickiness": "session"}, "stickiness"),
        ({"key": "ok.key", "enabled": "yes"}, "enabled"),
        ({"key": "ok.key", "description": "d" * 1001}, "description"),
        ({"key": "ok.key", "archived": True}, "archived"),
    ],
)
def test_invalid_definitions_are_422_naming_the_field(
    client: httpx.Client, admin: str, body: dict, field: str
) -> None:
    assert_problem(client.post("/v1/admin/flags", json=body, headers=auth(admin)), 422, field)


def test_invalid_changes_unknown_flags_and_unknown_orgs(
    client: httpx.Client, org: OrgWorld, admin: str
) -> None:
    headers = auth(admin)
    key = create_flag(client, admin)["key"]
    assert_problem(
        client.patch(f"/v1/admin/flags/{key}", json={"rollout_percentage": 101}, headers=headers),
        422,
        "rollout_percentage",
    )
    assert_problem(
        client.patch(f"/v1/admin/flags/{key}", json={"key": "renamed"}, headers=headers), 422, "key"
    )
    assert_problem(client.get("/v1/admin/flags/not%20a%20key", headers=headers), 422, "key")
    ghost = unique("ghost")
    assert "no flag" in assert_problem(client.get(f"/v1/admin/flags/{ghost}", headers=headers), 404)["detail"]
    assert_problem(client.patch(f"/v1/admin/flags/{ghost}", json={"enabled": False}, headers=headers), 404)
    assert_problem(client.delete(f"/v1/admin/flags/{ghost}", headers=headers), 404)
    assert_problem(
        client.put(
            f"/v1/admin/flags/{ghost}/overrides/{org.id}",
            json={"enabled": True, "reason": "r"},
            headers=headers,
        ),
        404,
    )
    overrides = f"/v1/admin/flags/{key}/overrides"
    assert (
        "organization"
        in assert_problem(
            client.put(f"{overrides}/{uuid.uuid4()}", json={"enabled": True, "reason": "r"}, headers=headers),
            404,
        )["detail"]
    )
    assert_problem(client.delete(f"{overrides}/{uuid.uuid4()}", headers=headers), 404)
    assert_problem(
        client.put(f"{overrides}/{org.id}", json={"enabled": True}, headers=headers), 422, "reason"
    )
    assert_problem(
        client.put(f"{overrides}/{org.id}", json={"enabled": True, "reason": ""}, headers=headers),
        422,
        "reason",
    )
    assert_problem(client.put(f"{overrides}/{org.id}", json={"reason": "r"}, headers=headers), 422, "enabled")
    # A deleted organization takes no new overrides.
    assert client.delete(f"/v1/orgs/{org.id}", headers=org.headers("owner")).status_code == 204
    assert_problem(
        client.put(f"{overrides}/{org.id}", json={"enabled": True, "reason": "r"}, headers=headers), 404
    )


# --- evaluation ----------------------------------------------------------------------------------


def test_evaluation_follows_the_rollout_and_overrides(
    client: httpx.Client, org: OrgWorld, admin: str
) -> None:
    partial = create_flag(client, admin, rollout_percentage=30)["key"]
    by_user = create_flag(client, admin, rollout_percentage=50, stickiness="user")["key"]
    everyone = create_flag(client, admin, rollout_percentage=100)["key"]
    nobody = create_flag(client, admin, rollout_percentage=0)["key"]
    key_headers = auth(org.ingest_key)
    eventually(lambda: nobody in evaluated(client, key_headers), what="the new flags reach the cache")

    flags = evaluated(client, key_headers)
    assert flags[partial] is (bucket(partial, org.id) <= 30)
    assert flags[everyone] is True and flags[nobody] is False
    assert flags[by_user] is False  # sticky by user, no user id: off
    for user in ("u-1", "u-2", "u-3", "u-4", "u-5", "u-6"):
        assert evaluated(client, key_headers, user_id=user)[by_user] is (bucket(by_user, user) <= 50)

    # An org ingest key may name its own org; a member names the org.
    assert evaluated(client, key_headers, org_id=org.id) == flags
    assert evaluated(client, org.headers("viewer"), org_id=org.id) == flags

    one = client.get(f"/v1/flags/evaluate/{partial}", headers=key_headers).json()
    assert one == {"key": partial, "enabled": flags[partial], "reason": "rollout"}
    no_user = client.get(f"/v1/flags/evaluate/{by_user}", headers=key_headers).json()
    assert no_user == {"key": by_user, "enabled": False, "reason": "missing_user_id"}

    # Precedence end to end: an override beats the rollout; the kill switch beats the override.
    client.put(
        f"/v1/admin/flags/{nobody}/overrides/{org.id}",
        json={"enabled": True, "reason": "beta"},
        headers=auth(admin),
    )
    eventually(lambda: evaluated(client, key_headers)[nobody], what="the override reaches the cache")
    assert client.get(f"/v1/flags/evaluate/{nobody}", headers=key_headers).json()["reason"] == "override"
    client.patch(f"/v1/admin/flags/{nobody}", json={"enabled": False}, headers=auth(admin))
    eventually(lambda: not evaluated(client, key_headers)[nobody], what="the kill switch reaches the cache")
    assert client.get(f"/v1/flags/evaluate/{nobody}", headers=key_headers).json()["reason"] == "kill_switch"
    client.delete(f"/v1/admin/flags/{everyone}", headers=auth(admin))
    eventually(lambda: not evaluated(client, key_headers)[everyone], what="archiving reaches the cache")
    assert client.get(f"/v1/flags/evaluate/{everyone}", headers=key_headers).json()["reason"] == "archived"


def test_evaluation_refuses_outsiders_and_bad_input(
    client: httpx.Client, engine: Engine, org: OrgWorld, other_org: OrgWorld, admin: str
) -> None:
    key = create_flag(client, admin, rollout_percentage=100)["key"]
    eventually(
        lambda: client.get(f"/v1/flags/evaluate/{key}", headers=auth(org.ingest_key)).status_code == 200,
        what="the new flag reaches the cache",
    )
    member = org.headers("member")
    # Unknown flag, unknown org, an org the caller does not belong to: 404, alike.
    assert (
        "no flag"
        in assert_problem(
            client.get(f"/v1/flags/evaluate/{unique('nope')}", headers=auth(org.ingest_key)), 404
        )["detail"]
    )
    ghost = assert_problem(
        client.get("/v1/flags/evaluate", params={"org_id": str(uuid.uuid4())}, headers=member), 404
    )
    foreign = assert_problem(
        client.get("/v1/flags/evaluate", params={"org_id": other_org.id}, headers=member), 404
    )
    assert ghost["detail"] == foreign["detail"]
    assert_problem(
        client.get("/v1/flags/evaluate", params={"org_id": other_org.id}, headers=auth(org.ingest_key)), 404
    )
    assert_problem(
        client.get(f"/v1/flags/evaluate/{key}", params={"org_id": other_org.id}, headers=member), 404
    )
    # Staff get no org access from being staff; platform keys are not for evaluation.
    assert_problem(client.get("/v1/flags/evaluate", params={"org_id": org.id}, headers=auth(admin)), 404)
    platform_key = client.post("/v1/admin/ingest-keys", json={"name": "p"}, headers=auth(admin)).json()[
        "token"
    ]
    assert_problem(
        client.get("/v1/flags/evaluate", params={"org_id": org.id}, headers=auth(platform_key)), 403
    )
    # Bad input names the field.
    assert_problem(client.get("/v1/flags/evaluate", headers=member), 403, "org_id")
    assert_problem(
        client.get("/v1/flags/evaluate", params={"org_id": "not-a-uuid"}, headers=member), 422, "org_id"
    )
    assert_problem(
        client.get("/v1/flags/evaluate", params={"org_id": org.id, "user_id": "u" * 256}, headers=member),
        422,
        "user_id",
    )
    assert_problem(client.get("/v1/flags/evaluate/bad%20key", headers=auth(org.ingest_key)), 422, "key")
    assert_problem(client.get("/v1/flags/evaluate"), 401)

    # A suspended organization: 403 for its members and its keys.
    client.post(f"/v1/admin/orgs/{org.id}/suspend", json={"reason": "unpaid"}, headers=auth(admin))
    assert (
        "suspended"
        in assert_problem(client.get("/v1/flags/evaluate", params={"org_id": org.id}, headers=member), 403)[
            "detail"
        ]
    )
    assert_problem(client.get(f"/v1/flags/evaluate/{key}", headers=auth(org.ingest_key)), 403)
    client.post(f"/v1/admin/orgs/{org.id}/unsuspend", headers=auth(admin))
    assert evaluated(client, member, org_id=org.id)[key] is True
    # A deleted one is gone.
    client.delete(f"/v1/orgs/{org.id}", headers=org.headers("owner"))
    assert_problem(
        client.get("/v1/flags/evaluate", params={"org_id": org.id}, headers=org.headers("owner")), 404
    )


def test_admin_org_view_shows_flag_states_and_overrides(
    client: httpx.Client, org: OrgWorld, admin: str
) -> None:
    on = create_flag(client, admin, rollout_percentage=100)["key"]
    forced = create_flag(client, admin, rollout_percentage=100)["key"]
    archived = create_flag(client, admin)["key"]
    client.put(
        f"/v1/admin/flags/{forced}/overrides/{org.id}",
        json={"enabled": False, "reason": "opted out"},
        headers=auth(admin),
    )
    client.put(
        f"/v1/admin/flags/{archived}/overrides/{org.id}",
        json={"enabled": True, "reason": "beta"},
        headers=auth(admin),
    )
    client.delete(f"/v1/admin/flags/{archived}", headers=auth(admin))

    view = client.get(f"/v1/admin/orgs/{org.id}", headers=auth(admin))
    assert view.status_code == 200, view.text
    states = {s["key"]: s for s in view.json()["flags"]}
    assert states[on]["enabled"] is True and states[on]["reason"] == "rollout" and states[on]["bucket"] >= 1
    assert states[forced]["enabled"] is False and states[forced]["reason"] == "override"
    assert archived not in states  # archived flags are off for everyone; their overrides are listed below
    overrides = {o["flag_key"]: o for o in view.json()["flag_overrides"]}
    assert set(overrides) == {forced, archived}
    assert overrides[forced]["reason"] == "opted out" and overrides[forced]["enabled"] is False


# --- the in-process copy -------------------------------------------------------------------------


def test_every_change_bumps_the_version(
    client: httpx.Client, engine: Engine, org: OrgWorld, admin: str
) -> None:
    def version() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version FROM flags_version WHERE id = 1")).scalar_one()

    start = version()
    key = create_flag(client, admin)["key"]
    after_create = version()
    client.put(
        f"/v1/admin/flags/{key}/overrides/{org.id}",
        json={"enabled": True, "reason": "r"},
        headers=auth(admin),
    )
    after_override = version()
    assert start < after_create < after_override


@pytest.fixture
def second_server(settings: Settings) -> Iterator[LiveServer]:
    """Another API process on the same database (its own app, engine and flag cache)."""
    with LiveServer(create_app(settings)) as server:
        yield server


def test_a_change_through_one_process_reaches_another_within_two_seconds(
    client: httpx.Client, second_server: LiveServer, org: OrgWorld, admin: str
) -> None:
    key_headers = auth(org.ingest_key)
    with httpx.Client(base_url=second_server.url, timeout=30) as other:
        key = create_flag(client, admin, rollout_percentage=0)["key"]
        eventually(lambda: key in evaluated(other, key_headers), what="a new flag reaches the other process")

        client.patch(f"/v1/admin/flags/{key}", json={"rollout_percentage": 100}, headers=auth(admin))
        eventually(
            lambda: evaluated(other, key_headers)[key], what="a rollout change reaches the other process"
        )

        # And back the other way: an override made through the second process.
        other.put(
            f"/v1/admin/flags/{key}/overrides/{org.id}",
            json={"enabled": False, "reason": "r"},
            headers=auth(admin),
        )
        eventually(
            lambda: not evaluated(client, key_headers)[key], what="an override reaches the first process"
        )


class DeafFlagStore(FlagStore):
    """Never hears a NOTIFY: only the version poll can find changes."""

    async def _wait_for_change(self) -> None:
        await asyncio.sleep(self.poll_interval)


def _insert_flag(engine: Engine, key: str) -> None:
    """A change made behind the API's back (psql, a script): the trigger must still tell the caches."""
    with engine.begin() as conn:
        conn.execute(
            insert(FeatureFlag).values(
                id=new_id(), key=key, description="", enabled=True, rollout_percentage=100, stickiness="org"
            )
        )


async def _until(check: Callable[[], bool], what: str, within: float = PROPAGATION_BOUND) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


async def test_evaluation_is_503_until_the_first_load(database_url: str) -> None:
    async_engine = make_async_engine(database_url, pool_size=1)
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            _ = FlagStore(async_engine, database_url).snapshot
        assert raised.value.status_code == 503
    finally:
        await async_engine.dispose()


async def test_a_missed_notify_is_caught_by_the_version_poll(database_url: str, engine: Engine) -> None:
    async_engine = make_async_engine(database_url, pool_size=2)
    store = DeafFlagStore(async_engine, database_url)
    await store.start()
    try:
        assert store.loaded
        key = unique("deaf")
        _insert_flag(engine, key)
        await _until(lambda: key in store.snapshot.flags, "the poll finds a change whose NOTIFY was missed")
    finally:
        await store.stop()
        await async_engine.dispose()


async def test_a_dropped_listen_connection_is_survived(database_url: str, engine: Engine) -> None:
    async_engine = make_async_engine(database_url, pool_size=2)
    store = FlagStore(async_engine, database_url)
    await store.start()
    try:
        await _until(lambda: store.listener_pid is not None, "the store listens", within=HANG_GUARD)
        dropped = store.listener_pid
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped})
        key = unique("dropped")
        _insert_flag(engine, key)
        await _until(lambda: key in store.snapshot.flags, "a change made while the listener was down")
        await _until(
            lambda: store.listener_pid not in (None, dropped), "the store listens again", within=HANG_GUARD
        )
        later = unique("relisten")
        _insert_flag(engine, later)
        await _until(lambda: later in store.snapshot.flags, "a change after reconnecting")
    finally:
        await store.stop()
        await async_engine.dispose()


# --- the CLI -------------------------------------------------------------------------------------


def test_keel_flags_explain(
    client: httpx.Client, database_url: str, org: OrgWorld, admin: str, tmp_path: Path
) -> None:
    rollout = create_flag(client, admin, rollout_percentage=40)["key"]
    forced = create_flag(client, admin, rollout_percentage=0)["key"]
    client.put(
        f"/v1/admin/flags/{forced}/overrides/{org.id}",
        json={"enabled": True, "reason": "design partner"},
        headers=auth(admin),
    )
    killed = create_flag(client, admin, rollout_percentage=100, enabled=False)["key"]

    n = bucket(rollout, org.id)
    result = keel("flags", "explain", rollout, "--org", org.id, database_url=database_url, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"bucket {n} {'<=' if n <= 40 else '>'} rollout 40" in result.stdout
    assert ("ON" if n <= 40 else "OFF") in result.stdout

    result = keel(
        "flags",
        "explain",
        forced,
        "--org",
        org.id,
        "--user",
        "u-7",
        database_url=database_url,
        tmp_path=tmp_path,
    )
    assert result.returncode == 0 and "ON" in result.stdout and "design partner" in result.stdout

    result = keel("flags", "explain", killed, "--org", org.id, database_url=database_url, tmp_path=tmp_path)
    assert result.returncode == 0 and "OFF" in result.stdout and "kill switch" in result.stdout

    for args, message in (
        ((unique("ghost"), "--org", org.id), "no flag"),
        ((rollout, "--org", str(uuid.uuid4())), "organization not found"),
    ):
        failed = keel("flags", "explain", *args, database_url=database_url, tmp_path=tmp_path)
        assert failed.returncode == 1 and message in failed.stderr and "Traceback" not in failed.stderr
    bad = keel(
        "flags", "explain", rollout, "--org", "not-a-uuid", database_url=database_url, tmp_path=tmp_path
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_staff_and_members_of_other_orgs_get_nothing_an_owner_gets_what_the_key_gets(
    client: httpx.Client, engine: Engine, org: OrgWorld
) -> None:
    _, support = make_user(engine, platform_role=PlatformRole.support)
    assert_problem(client.get("/v1/flags/evaluate", params={"org_id": org.id}, headers=auth(support)), 404)
    fresh = make_org(client, engine, roles=("owner",))
    assert evaluated(client, fresh.headers("owner"), org_id=fresh.id) == evaluated(
        client, auth(fresh.ingest_key)
    )


def test_a_members_cached_access_ends_when_the_membership_does(client: httpx.Client, engine: Engine) -> None:
    """Evaluation keeps a member's access for ``cache.TTL`` seconds instead of asking the database
    each time; taking the access away through the API ends it at once, behind its back within TTL."""
    world = make_org(client, engine, roles=("owner", "member", "viewer", "billing"))

    def status(role: str) -> int:
        response = client.get("/v1/flags/evaluate", params={"org_id": world.id}, headers=world.headers(role))
        return response.status_code

    assert [status(role) for role in ("member", "viewer", "billing")] == [200, 200, 200]  # now cached
    # Through the API: a removal ends access at once; a role change keeps it (every role reads flags).
    owner = world.headers("owner")
    removed = client.delete(f"/v1/orgs/{world.id}/members/{world.user_ids['member']}", headers=owner)
    assert removed.status_code == 204, removed.text
    assert status("member") == 404
    viewer = f"/v1/orgs/{world.id}/members/{world.user_ids['viewer']}"
    assert client.patch(viewer, json={"role": "member"}, headers=owner).status_code == 200
    assert status("viewer") == 200
    # Behind the API's back (psql): no process is told, so the cache's bound applies.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE memberships SET status = 'removed' WHERE organization_id = :o AND user_id = :u"),
            {"o": world.id, "u": world.user_ids["billing"]},
        )
    eventually(lambda: status("billing") == 404, what="a membership removed in the database ends",
               within=cache.TTL + REQUEST_SLACK)  # fmt: skip
    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET status = 'suspended' WHERE id = :o"), {"o": world.id})
    eventually(lambda: status("viewer") == 403, what="an org suspended in the database stops answering",
               within=cache.TTL + REQUEST_SLACK)  # fmt: skip


# --- exposure tracking ----------------------------------------------------------------------------


def test_track_records_each_answer_as_an_event_of_the_org(
    client: httpx.Client, engine: Engine, org: OrgWorld, admin: str
) -> None:
    flag = create_flag(client, admin, rollout_percentage=100)
    eventually(  # the new flag reaches the in-process copy within the 2 s promise
        lambda: (
            client.get(f"/v1/flags/evaluate/{flag['key']}", headers=auth(org.ingest_key)).status_code == 200
        ),
        what="the new flag is evaluated",
    )
    one = client.get(f"/v1/flags/evaluate/{flag['key']}", params={"user_id": "end-user-9", "track": "true"},
                     headers=auth(org.ingest_key))  # fmt: skip
    assert one.status_code == 200 and one.json()["enabled"] is True
    every = client.get(
        "/v1/flags/evaluate", params={"org_id": org.id, "track": "true"}, headers=org.headers("member")
    )
    assert every.status_code == 200
    untracked = client.get("/v1/flags/evaluate", params={"org_id": org.id}, headers=org.headers("member"))
    assert untracked.status_code == 200
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT user_id, properties FROM events WHERE organization_id = :o AND event = '$flag_evaluated'"
            ),
            {"o": org.id},
        ).all()
    mine = [(user, props) for user, props in rows if props["flag"] == flag["key"]]
    assert ("end-user-9", {"flag": flag["key"], "enabled": True, "reason": "rollout",
                           "bucket": mine[0][1]["bucket"], "rollout_percentage": 100}) in mine  # fmt: skip
    assert (org.user_ids["member"], mine[1][1]) in mine  # the member's own id when no user_id is given
    assert len(mine) == 2 and len(rows) == len(every.json()["flags"]) + 1
