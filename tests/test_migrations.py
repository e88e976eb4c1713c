"""The schema comes from the migrations alone, they go both ways, and the models agree with them."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from api.db.engine import make_sync_engine
from api.db.migrate import alembic_config, downgrade, include_object, upgrade
from api.models import metadata


def test_upgrade_downgrade_upgrade(fresh_database: str) -> None:
    engine = make_sync_engine(fresh_database)
    try:
        upgrade(fresh_database)
        tables = set(inspect(engine).get_table_names())
        assert {"users", "organizations", "memberships", "api_tokens", "audit_log"} <= tables
        downgrade(fresh_database, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(fresh_database)
        assert {"users", "audit_log"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = make_sync_engine(database_url)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alembic warns that it skips expression indexes
            diff = compare_metadata(
                MigrationContext.configure(
                    conn, opts={"compare_type": True, "include_object": include_object}
                ),
                metadata,
            )
        assert diff == []
    finally:
        engine.dispose()


def test_audit_log_is_append_only_in_the_database(admin_database_url: str, org) -> None:  # type: ignore[no-untyped-def]
    """Even the owner's session meets the triggers (the application role does not get that far:
    tests/test_db_roles.py)."""
    engine = make_sync_engine(admin_database_url)
    try:
        for statement in (
            "UPDATE audit_log SET action = 'forged' WHERE organization_id = :org",
            "DELETE FROM audit_log WHERE organization_id = :org",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement), {"org": org.id})
        with engine.connect() as conn:
            assert conn.execute(
                text("SELECT count(*) FROM audit_log WHERE organization_id = :o"), {"o": org.id}
            ).scalar()
    finally:
        engine.dispose()


_BARE_ORG = text(
    "INSERT INTO organizations (id, name, slug, status, lake_version) VALUES (:id, 'Bare', :slug, 'active', 0)"
)
_FIRST_LINK = text(
    "INSERT INTO audit_log (id, chain_key, seq, organization_id, occurred_at, actor_type, action, metadata,"
    " prev_hash, hash)"
    " VALUES (gen_random_uuid(), :k, 1, :o, now(), 'system', 'org.created', '{}', repeat('0', 64),"
    " repeat('a', 64))"
)


def test_an_entry_names_an_existing_organization_which_then_stays(admin_database_url: str, org) -> None:  # type: ignore[no-untyped-def]
    """What a foreign key guaranteed, checked once per statement by a trigger (0095): an
    entry naming no organization is refused whole, an organization with entries cannot be deleted
    or re-keyed, and an uncommitted entry holds its organization's key lock."""
    engine = make_sync_engine(admin_database_url)
    missing, bare = uuid.uuid4(), uuid.uuid4()
    try:
        refused_missing = pytest.raises(DBAPIError, match=f"organization {missing}, which does not exist")
        with refused_missing as refused, engine.begin() as conn:
            conn.execute(_FIRST_LINK, {"k": str(missing), "o": missing})
        assert getattr(refused.value.orig, "sqlstate", None) == "23503"  # foreign_key_violation
        for statement in (
            "DELETE FROM organizations WHERE id = :org",
            "UPDATE organizations SET id = gen_random_uuid() WHERE id = :org",
        ):
            with pytest.raises(DBAPIError, match="has audit entries"), engine.begin() as conn:
                conn.execute(text(statement), {"org": org.id})
        with engine.connect() as conn:
            assert not conn.execute(
                text("SELECT count(*) FROM audit_log WHERE chain_key = :k"), {"k": str(missing)}
            ).scalar()
            assert conn.execute(
                text("SELECT count(*) FROM organizations WHERE id = :o"), {"o": org.id}
            ).scalar()
            conn.execute(_BARE_ORG, {"id": bare, "slug": f"bare-{bare.hex[:12]}"})
            conn.commit()
        with engine.connect() as writer, engine.connect() as deleter:
            writer.execute(_FIRST_LINK, {"k": str(bare), "o": bare})  # left uncommitted
            deleter.execute(text("SET lock_timeout = '200ms'"))
            with pytest.raises(DBAPIError, match="lock timeout"):
                deleter.execute(text("DELETE FROM organizations WHERE id = :o"), {"o": bare})
            deleter.rollback()
            writer.rollback()
            deleter.execute(
                text("DELETE FROM organizations WHERE id = :o"), {"o": bare}
            )  # no entries: it may go
            deleter.commit()
            assert not deleter.execute(
                text("SELECT count(*) FROM organizations WHERE id = :o"), {"o": bare}
            ).scalar()
    finally:
        engine.dispose()


def fullwidth(text: str) -> str:
    """The full-width lookalike of ASCII text (U+FF01-FF5E for ``!``-``~``)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize("lookalike", [str.upper, fullwidth, lambda e: fullwidth(e.upper())])
def test_emails_are_unique_regardless_of_case_and_width(
    database_url: str, lookalike: Callable[[str], str]
) -> None:
    """Refused by the database itself, even for a row written past the API's normalization."""
    engine = make_sync_engine(database_url)
    original = f"Case{uuid.uuid4().hex[:8]}@Unique.test"
    insert = text("INSERT INTO users (id, email, status) VALUES (gen_random_uuid(), :e, 'active')")
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"e": original})
        with pytest.raises(DBAPIError, match="uq_users_email_key"), engine.begin() as conn:
            conn.execute(insert, {"e": lookalike(original)})
    finally:
        engine.dispose()


def test_the_upgrade_names_addresses_that_now_collide(fresh_database: str) -> None:
    engine = make_sync_engine(fresh_database)
    try:
        upgrade(fresh_database, "0007")
        with engine.begin() as conn:
            for email in ("ada@example.test", f"{fullwidth('ada')}@example.test"):
                conn.execute(
                    text("INSERT INTO users (id, email, status) VALUES (gen_random_uuid(), :e, 'active')"),
                    {"e": email},
                )
        with pytest.raises(RuntimeError, match="merged or renamed") as refused:
            upgrade(fresh_database)
        assert "ada@example.test" in str(refused.value)
        assert f"{fullwidth('ada')}@example.test" in str(refused.value)
        with engine.begin() as conn:
            conn.execute(
                text("DELETE FROM users WHERE email = :e"), {"e": f"{fullwidth('ada')}@example.test"}
            )
        upgrade(fresh_database)
        with engine.connect() as conn:
            head = ScriptDirectory.from_config(alembic_config(fresh_database)).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    finally:
        engine.dispose()


def test_keys_stored_before_0080_still_dedupe_after_it(fresh_database: str) -> None:
    """Upgrading from 0075 with events in place: their keys move into the events partitions' unique
    indexes (the key rows stay until their day goes), replays are still duplicates, and the way
    back puts every event's key into event_keys again."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    import psycopg

    from api.db.engine import libpq_url
    from api.events.store import PartitionKeeper, store
    from tests.test_events_writer import _row

    org_id = uuid.uuid4()
    now = datetime.now(UTC)
    yesterday = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=1)
    stored = {"old-noon": yesterday + timedelta(hours=12), "old-today": now}
    engine = make_sync_engine(fresh_database)
    try:
        upgrade(fresh_database, "0075")
        with engine.begin() as conn:  # as 0075's ingest statement leaves them: an event, its key
            conn.execute(text("SELECT keel_ensure_event_partitions(CAST(:d AS date), 3)"), {"d": yesterday})
            for message_id, received_at in stored.items():
                params = {"o": org_id, "m": message_id, "r": received_at}
                conn.execute(text("INSERT INTO event_keys VALUES (:o, :m, :r)"), params)
                conn.execute(
                    text(
                        "INSERT INTO events (organization_id, message_id, event, timestamp, received_at,"
                        " properties, context) VALUES (:o, :m, 'x', :r, :r, '{}', '{}')"
                    ),
                    params,
                )
        upgrade(fresh_database)

        async def replay(message_id: str, received_at: datetime, days: int) -> int:
            async with await psycopg.AsyncConnection.connect(
                libpq_url(fresh_database), autocommit=True
            ) as conn:
                rows = [_row(org_id, message_id, received_at)]
                await PartitionKeeper(days).ensure_for(conn, rows)
                return await store(conn, rows, days)

        # The same day (the partition's new unique index), and the next day (the window's read).
        assert asyncio.run(replay("old-noon", yesterday + timedelta(hours=13), 0)) == 0
        assert asyncio.run(replay("old-noon", now, 1)) == 0
        assert asyncio.run(replay("old-today", now, 1)) == 0
        assert asyncio.run(replay("new-today", now, 1)) == 1
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM events")).scalar() == 3
        downgrade(fresh_database, "0075")
        with engine.connect() as conn:
            keys = conn.execute(text("SELECT message_id FROM event_keys ORDER BY 1")).scalars().all()
            assert sorted(set(keys)) == ["new-today", "old-noon", "old-today"]
        upgrade(fresh_database)
    finally:
        engine.dispose()
