"""One definition per business rule (warehouse/rules.py), and its consumers agree.

Each rule's SQL runs in Postgres (the API, the reconciliation) and as a DuckDB macro (the marts);
where the reconciliation decides in memory, a Python twin applies the same constants. The first
test proves the three forms give the same answer over every input; the others plant data in a
real Postgres, export it to a real lake, build the warehouse and ask every consumer of a rule the
same question: a consumer that drifted from the rule answers differently and fails them.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pytest
from sqlalchemy import Engine, insert, text
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Principal
from api.auth.models import User, UserStatus
from api.billing import reconcile as rec
from api.billing.models import Subscription, SubscriptionStatus
from api.billing.services import billing_screen
from api.billing.stripe_api import StripeSnapshot
from api.db.base import new_id
from api.db.engine import make_async_engine, make_sessionmaker, make_sync_engine
from api.db.migrate import upgrade
from api.db.reads import Reader, make_read_pool
from api.errors import Forbidden, NotFound
from api.events import store as event_store
from api.members.models import Membership, MembershipStatus, OrgRole
from api.orgs import services as orgs
from api.orgs.live import get_live_org
from api.orgs.models import Organization, OrgStatus
from api.tokens.models import TokenKind
from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import unique
from warehouse import rules
from warehouse.build import build_warehouse

T = TypeVar("T")
STATUSES = [s.value for s in SubscriptionStatus]


@pytest.fixture
def rules_db(fresh_database: str) -> Iterator[tuple[str, Engine]]:
    upgrade(fresh_database)
    engine = make_sync_engine(fresh_database)
    yield fresh_database, engine
    engine.dispose()


def in_session(database_url: str, work: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        engine = make_async_engine(database_url, pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def build(database_url: str, tmp_path: Path, as_of: date) -> Path:
    """The lake export and the warehouse build, as the flows run them."""
    lake = Lake.open(str(tmp_path / "lake"))
    export_tasks.write_schemas(lake)
    for table in export_tasks.INCREMENTAL.values():
        export_tasks.export_table(database_url, lake, table)
    for snapshot in export_tasks.SNAPSHOTS.values():
        export_tasks.export_snapshot(database_url, lake, snapshot)
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(str(tmp_path / "lake"), warehouse, as_of=as_of)
    return warehouse


def mart(warehouse: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def insert_org(conn: Any, *, deleted: bool = False, status: OrgStatus = OrgStatus.active) -> uuid.UUID:
    org_id, slug = new_id(), unique("rule")
    conn.execute(
        insert(Organization).values(
            id=org_id, name=f"Org {slug}", slug=slug, status=status,
            deleted_at=datetime.now(UTC) if deleted else None,
        )
    )  # fmt: skip
    return org_id


def add_member(conn: Any, org_id: uuid.UUID, status: MembershipStatus = MembershipStatus.active) -> uuid.UUID:
    user_id = new_id()
    conn.execute(
        insert(User).values(
            id=user_id, email=f"{unique('u')}@rules.example", name="U", status=UserStatus.active
        )
    )
    conn.execute(
        insert(Membership).values(
            id=new_id(), organization_id=org_id, user_id=user_id, role=OrgRole.owner, status=status
        )
    )
    return user_id


# -- the rule's three forms agree ------------------------------------------------------------------


def test_each_rule_answers_alike_in_python_duckdb_and_postgres(rules_db: tuple[str, Engine]) -> None:
    """Every input of the rules with a Python twin, asked of DuckDB's macro and of Postgres's
    rendering: one answer. (The current-subscription rank over random sets of subscriptions.)"""
    _, engine = rules_db
    duck = duckdb.connect()
    for rule in rules.RULES:
        duck.execute(rule.macro())
    when = datetime(2026, 3, 1, tzinfo=UTC)
    with engine.connect() as pg:

        def ask(rule: rules.Rule, *args: str, **params: Any) -> tuple[Any, Any]:
            """The macro's answer in DuckDB and the rendered rule's in Postgres (``:name`` params)."""
            macro = f"SELECT {rule.name}({', '.join(args)})".replace(":", "$")
            return duck.execute(macro, params).fetchone()[0], pg.execute(  # type: ignore[index]
                text(f"SELECT {rule.sql(*args)}"), params
            ).scalar()

        for deleted_at in (None, when):
            expected = rules.org_is_live(deleted_at)
            assert ask(rules.ORG_IS_LIVE, "CAST(:d AS timestamptz)", d=deleted_at) == (expected,) * 2
        for status in STATUSES:
            expected = rules.subscription_is_ended(status)
            assert ask(rules.SUBSCRIPTION_IS_ENDED, ":s", s=status) == (expected,) * 2, status
            for members, seats in itertools.product([0, 2, 3, 4], [None, 0, 3]):
                expected = rules.over_seat_limit(status, members, seats)
                answers = ask(
                    rules.OVER_SEAT_LIMIT, ":s", "CAST(:m AS integer)", "CAST(:n AS integer)",
                    s=status, m=members, n=seats,
                )  # fmt: skip
                assert answers == (expected,) * 2, (status, members, seats)
        for ids in itertools.product([None, "u1"], [None, "device-1"], [None, "u9"]):
            expected = rules.active_user(*ids)
            answers = ask(rules.ACTIVE_USER, "CAST(:u AS text)", "CAST(:a AS text)", "CAST(:l AS text)",
                          **dict(zip("ual", ids, strict=True)))  # fmt: skip
            assert answers == (expected,) * 2, ids
        as_of = date(2026, 3, 31)
        for back in range(-2, 40):
            day = as_of - timedelta(days=back)
            expected = rules.in_mau_window(day, as_of)
            assert ask(rules.IN_MAU_WINDOW, "CAST(:d AS date)", "CAST(:a AS date)", d=day, a=as_of) == (
                (expected,) * 2
            ), back
        assert [rules.in_mau_window(as_of - timedelta(days=b), as_of) for b in (-1, 0, 29, 30)] == [
            False,
            True,
            True,
            False,
        ]

        randomness = random.Random(14)
        for trial in range(60):
            subs = [
                (
                    randomness.choice(STATUSES),
                    when + timedelta(seconds=randomness.randint(0, 3)),
                    f"sub_{i:02d}",
                )
                for i in randomness.sample(range(20), randomness.randint(1, 5))
            ]
            python = max(subs, key=lambda s: rules.subscription_rank(*s))[2]
            values = ", ".join(f"($s{i}, CAST($c{i} AS TIMESTAMPTZ), $i{i})" for i in range(len(subs)))
            params = {f"{k}{i}": v for i, s in enumerate(subs) for k, v in zip("sci", s, strict=True)}
            duck_pick = duck.execute(
                f"SELECT i FROM (VALUES {values}) t(s, c, i) ORDER BY keel_subscription_rank(s, c, i) DESC LIMIT 1",
                params,
            ).fetchone()[0]  # type: ignore[index]
            pg_values = values.replace("$", ":").replace("AS TIMESTAMPTZ", "AS timestamptz")
            pg_pick = pg.execute(
                text(
                    f"SELECT i FROM (VALUES {pg_values}) t(s, c, i)"
                    f" ORDER BY {rules.SUBSCRIPTION_RANK.sql('s', 'c', 'i')} DESC LIMIT 1"
                ),
                params,
            ).scalar()
            assert python == duck_pick == pg_pick, (trial, subs)
    duck.close()


# -- the current subscription and the seats used ---------------------------------------------------


def stripe_object(org_id: uuid.UUID, sub_id: str, status: str, created: datetime) -> dict[str, Any]:
    return {
        "id": sub_id, "object": "subscription", "customer": f"cus_{org_id.hex[-12:]}", "status": status,
        "created": int(created.timestamp()), "metadata": {"organization_id": str(org_id)},
        "items": {"data": [{"quantity": 1, "price": {"id": "price_team", "lookup_key": sub_id, "currency": "usd"}}]},
    }  # fmt: skip


def test_billing_screen_reconciliation_and_marts_pick_the_same_current_subscription_and_seats_used(
    rules_db: tuple[str, Engine], tmp_path: Path
) -> None:
    """Several subscriptions per organization, created and updated in different orders: the
    billing screen, the reconciliation's seat and usage checks, ``stg_subscriptions`` and
    ``org_health`` all name the same current one, and count the same seats used."""
    database_url, engine = rules_db
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    # (status, created, updated) per subscription; the current one is marked by the rule.
    plans: dict[str, list[tuple[str, datetime, datetime]]] = {
        # Two live ones: the older was updated last (a rule by updated_at would pick it).
        "newest_created_not_last_updated": [("active", t0, t0 + timedelta(hours=5)),
                                            ("active", t0 + timedelta(hours=1), t0 + timedelta(hours=2))],
        # A live one beats a newer ended one.
        "live_before_ended": [("past_due", t0, t0), ("canceled", t0 + timedelta(hours=2), t0 + timedelta(hours=3))],
        # Both ended, created in the same instant: the greater id.
        "tie_broken_by_id": [("canceled", t0, t0 + timedelta(hours=1)), ("incomplete_expired", t0, t0)],
        # Trialing created after an active one: created wins, whatever the status.
        "trial_after_active": [("active", t0, t0 + timedelta(hours=4)), ("trialing", t0 + timedelta(hours=3), t0)],
    }  # fmt: skip
    orgs_by_case: dict[str, uuid.UUID] = {}
    subs_by_case: dict[str, list[str]] = {}
    objects: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for case, subs in plans.items():
            org_id = insert_org(conn)
            orgs_by_case[case] = org_id
            memberships = [MembershipStatus.active] * 3 + [MembershipStatus.invited, MembershipStatus.removed]
            for membership in memberships:
                add_member(conn, org_id, membership)
            conn.execute(
                text("UPDATE organizations SET stripe_customer_id = :c WHERE id = :o"),
                {"c": f"cus_{org_id.hex[-12:]}", "o": org_id},
            )
            ids = []
            for n, (status, created, updated) in enumerate(subs):
                sub_id = f"sub_{org_id.hex[-8:]}_{n}"
                ids.append(sub_id)
                conn.execute(
                    insert(Subscription).values(
                        id=new_id(), organization_id=org_id, stripe_subscription_id=sub_id,
                        stripe_customer_id=f"cus_{org_id.hex[-12:]}", stripe_price_id="price_team", plan=sub_id,
                        status=SubscriptionStatus(status), seats=1, currency="usd", cancel_at_period_end=False,
                        stripe_state_at=updated, synced_at=datetime.now(UTC), created_at=created, updated_at=updated,
                    )
                )  # fmt: skip
                objects.append(stripe_object(org_id, sub_id, status, created))
            subs_by_case[case] = ids
    expected = {
        "newest_created_not_last_updated": subs_by_case["newest_created_not_last_updated"][1],
        "live_before_ended": subs_by_case["live_before_ended"][0],
        "tie_broken_by_id": subs_by_case["tie_broken_by_id"][1],
        "trial_after_active": subs_by_case["trial_after_active"][1],
    }

    # 1. The billing screen (Postgres, ORDER BY the rule's rank).
    screens = {
        case: in_session(database_url, lambda s, o=org_id: billing_screen(s, o))  # type: ignore[misc]
        for case, org_id in orgs_by_case.items()
    }
    assert {c: s.stripe_subscription_id for c, s in screens.items()} == expected
    assert {s.seats_used for s in screens.values()} == {3}

    # 2. The reconciliation: over Stripe's objects, its seat check (good standing) or its usage
    # check (not paying) names the subscription it took as current.
    org_facts, rows = in_session(database_url, rec.keel_side)
    assert {org_facts[o].active_members for o in orgs_by_case.values()} == {3}
    usage = dict.fromkeys(orgs_by_case.values(), 5)
    snapshot = StripeSnapshot(datetime.now(UTC), customers=[], subscriptions=objects)
    found = rec.compare(
        snapshot, org_facts, rows, usage, now=datetime.now(UTC), stale_after=timedelta(days=30)
    )
    named = {
        f.organization_id: f.stripe_subscription_id
        for f in found.found
        if f.kind in (rec.K.over_seat_limit, rec.K.unpaid_active_usage)
    }
    assert {case: named.get(org_id) for case, org_id in orgs_by_case.items()} == expected
    over = {f.organization_id for f in found.found if f.kind is rec.K.over_seat_limit}

    # 3. The marts.
    warehouse = build(database_url, tmp_path, datetime.now(UTC).date())
    # The mirror's plan is the subscription's id here, so the staged row names the one it kept.
    staged = dict(mart(warehouse, "SELECT organization_id, plan FROM int_current_subscriptions"))
    assert {case: staged[str(org_id)] for case, org_id in orgs_by_case.items()} == expected
    health = {
        uuid.UUID(o): (members, flag)
        for o, members, flag in mart(
            warehouse, "SELECT organization_id, active_members, over_seat_limit FROM org_health"
        )
    }
    assert {health[o][0] for o in orgs_by_case.values()} == {3}
    assert {o for o in orgs_by_case.values() if health[o][1]} == over
    assert over == {orgs_by_case["newest_created_not_last_updated"], orgs_by_case["live_before_ended"],
                    orgs_by_case["trial_after_active"]}  # fmt: skip


# -- active users ----------------------------------------------------------------------------------


def test_monthly_active_users_are_the_same_from_postgres_and_from_the_warehouse(
    rules_db: tuple[str, Engine], tmp_path: Path
) -> None:
    """Identified users, anonymous-only visitors, ids merged by alias (one person counted once),
    and users just inside and just outside the 30 days: the reconciliation's Postgres fallback,
    its warehouse source and ``org_health.mau`` count the same users."""
    database_url, engine = rules_db
    today = datetime.now(UTC).date()
    with engine.begin() as conn:
        mixed, anonymous_only = insert_org(conn), insert_org(conn)
        conn.execute(text("SELECT keel_ensure_event_partitions(current_date - 1, 3)"))
        planted = [
            (mixed, "u1", None, 0), (mixed, "u1", None, 1), (mixed, "u2", "device-2", 0),
            (mixed, None, "device-a", 0), (mixed, None, "device-b", 3),
            (mixed, "u-29", None, 29), (mixed, "u-30", None, 30), (mixed, "u-40", None, 40),
            (anonymous_only, None, "device-c", 0), (anonymous_only, None, "device-d", 2),
            (mixed, "old-u2", None, 1), (mixed, None, "device-e", 2),
        ]  # fmt: skip
        # alias calls: device-a is u1 (counted once), old-u2 is u2, device-c is someone never seen by
        # user id (counted as that user), device-e is u-40 (active now through its device).
        for org_id, previous_id, user_id in [
            (mixed, "device-a", "u1"), (mixed, "old-u2", "u2"), (anonymous_only, "device-c", "u-c"),
            (mixed, "device-e", "u-40"),
        ]:  # fmt: skip
            conn.execute(
                text(
                    "INSERT INTO identity_aliases (organization_id, previous_id, user_id, message_id, timestamp)"
                    " VALUES (:o, :p, :u, :m, now())"
                ),
                {"o": org_id, "p": previous_id, "u": user_id, "m": unique("a")},
            )
        for org_id, user_id, anonymous_id, back in planted:
            conn.execute(
                text(
                    "INSERT INTO events (organization_id, message_id, event, user_id, anonymous_id, timestamp,"
                    " received_at, properties, context) VALUES (:o, :m, 'page', :u, :a, :t, now(), '{}', '{}')"
                ),
                {"o": org_id, "m": unique("m"), "u": user_id, "a": anonymous_id,
                 "t": datetime.combine(today - timedelta(days=back), time(12), tzinfo=UTC)},
            )  # fmt: skip
    postgres, source = in_session(database_url, lambda s: rec.usage_by_org(s, None))
    assert source == "postgres"
    warehouse = build(database_url, tmp_path, today)
    from_warehouse, source = in_session(database_url, lambda s: rec.usage_by_org(s, warehouse))
    assert source == "warehouse"
    health = {uuid.UUID(o): mau for o, mau in mart(warehouse, "SELECT organization_id, mau FROM org_health")}
    counted = {mixed: 4, anonymous_only: 1}  # u1, u2, u-29, u-40; u-c
    assert {o: postgres.get(o, 0) for o in counted} == counted
    assert {o: from_warehouse.get(o, 0) for o in counted} == counted
    assert {o: health[o] for o in counted} == counted


# -- live organizations ----------------------------------------------------------------------------


def test_every_check_of_a_live_organization_sees_the_same_organizations(
    rules_db: tuple[str, Engine], tmp_path: Path
) -> None:
    """Active, suspended, deleted and deleted-while-suspended organizations, each with an active
    member: the org guard, org access (in a session and outside one), ingest, the event store, the
    org getter (orgs, flags and admin) and its read outside a transaction, the member's org list and
    ``org_health`` agree on which are live."""
    database_url, engine = rules_db
    cases = {
        "active": (False, OrgStatus.active),
        "suspended": (False, OrgStatus.suspended),
        "deleted": (True, OrgStatus.active),
        "deleted_suspended": (True, OrgStatus.suspended),
    }
    org_ids, users = {}, {}
    with engine.begin() as conn:
        for case, (deleted, status) in cases.items():
            org_ids[case] = insert_org(conn, deleted=deleted, status=status)
            users[case] = add_member(conn, org_ids[case])
    with engine.connect() as conn:
        deleted_at: dict[uuid.UUID, datetime | None] = dict(
            conn.execute(text("SELECT id, deleted_at FROM organizations")).tuples().all()
        )
    expected = {case for case, org_id in org_ids.items() if rules.org_is_live(deleted_at[org_id])}
    assert expected == {"active", "suspended"}

    def member(case: str) -> Principal:
        return Principal(token_id=new_id(), kind=TokenKind.user, user_id=users[case])

    platform_key = Principal(token_id=new_id(), kind=TokenKind.platform_ingest)

    async def seen(session: AsyncSession, check: Callable[[str], Coroutine[Any, Any, Any]]) -> set[str]:
        live = set()
        for case in cases:
            try:
                async with session.begin_nested():
                    await check(case)
            except NotFound:
                continue
            except Forbidden:  # suspended: refused with 403, so seen live (a deleted one is a 404)
                pass
            live.add(case)
        return live

    async def consumers(session: AsyncSession) -> dict[str, set[str]]:
        read_pool = make_read_pool(database_url)
        await read_pool.open()
        try:
            return await consumers_of(session, Reader(read_pool))
        finally:
            await read_pool.close()

    async def consumers_of(session: AsyncSession, reader: Reader) -> dict[str, set[str]]:
        conn = await event_store.session_connection(session)
        stored = await event_store.live_orgs(conn, set(org_ids.values()))
        listed = set()
        for case in cases:
            if any(org.id == org_ids[case] for org, _ in await orgs.list_user_orgs(
                session, user_id=users[case], cursor=None, limit=10
            )):  # fmt: skip
                listed.add(case)
        return {
            "guard_org": await seen(session, lambda c: auth.guard_org(reader, member(c), org_ids[c], opt={})),
            "read_access": await seen(
                session, lambda c: auth.read_access(reader, member(c), org_ids[c], auth.Permission.read_org)
            ),
            "read_live_org": await seen(session, lambda c: orgs.read_live_org(reader, org_ids[c])),
            "org_access": await seen(
                session, lambda c: auth.org_access(session, member(c), org_ids[c], auth.Permission.read_org)
            ),
            "ingest_org": await seen(session, lambda c: auth.ingest_org(session, platform_key, org_ids[c])),
            "get_live_org": await seen(session, lambda c: get_live_org(session, org_ids[c])),
            "event_store": {c for c, o in org_ids.items() if o in stored},
            "list_user_orgs": listed,
        }

    answers = in_session(database_url, consumers)
    warehouse = build(database_url, tmp_path, datetime.now(UTC).date())
    in_mart = {o for (o,) in mart(warehouse, "SELECT organization_id FROM org_health")}
    answers["org_health"] = {c for c, o in org_ids.items() if str(o) in in_mart}
    # list_user_orgs lists live orgs whatever their status; the guards refuse a suspended one with 403.
    assert answers == dict.fromkeys(answers, expected)
