"""The schema comes from the migrations alone, they go both ways, and the models agree with them."""

from __future__ import annotations

import warnings

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from api.db.base import Base
from api.db.engine import make_sync_engine
from api.db.migrate import downgrade, include_object, upgrade


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
                Base.metadata,
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


def test_emails_are_unique_regardless_of_case(database_url: str) -> None:
    engine = make_sync_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, email, status) VALUES (gen_random_uuid(), 'Case@Unique.test', 'active')"
                )
            )
        with pytest.raises(DBAPIError, match="uq_users_email_lower"), engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, email, status) VALUES (gen_random_uuid(), 'case@unique.TEST', 'active')"
                )
            )
    finally:
        engine.dispose()
