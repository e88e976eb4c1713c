"""Two database roles: the owner of the schema runs the migrations; the application connects as a
role that owns nothing and holds only the grants below.

- ``KEEL_ADMIN_DATABASE_URL`` (the owner) is used by ``keel db upgrade`` only. After the
  migrations it creates the role named in ``KEEL_DATABASE_URL`` (with that URL's password) when
  it does not exist, and grants it exactly :func:`app_grants` — again on every upgrade, after
  revoking what it had, so a new table is covered and a dropped privilege is gone.
- ``KEEL_DATABASE_URL`` (the application) is what ``keel serve``, ``keel worker`` and the flows
  connect with; :func:`refuse_privileged_role` stops them when that role is a superuser or owns
  Keel's tables (either could switch the audit log's triggers off), unless
  ``KEEL_ALLOW_PRIVILEGED_DATABASE_ROLE=true``.

Table privileges come from the tables themselves (the metadata of every table, :data:`api.models.metadata`,
which callers pass in: ``api/db`` imports no domain; the default
``APP_DEFAULT_PRIVILEGES``, or a table's ``info["app_privileges"]``); sequences get USAGE and
SELECT (defaults draw numbers, the exporter reads ``last_value``); functions the application may
execute are the owner's ``SECURITY DEFINER`` functions, found in the catalog.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql
from sqlalchemy import MetaData, Table
from sqlalchemy.engine import make_url

from api.db.base import APP_DEFAULT_PRIVILEGES
from api.db.engine import libpq_url

#: The one override of the refusal below (documented in docs/architecture.md).
OVERRIDE_SETTING = "KEEL_ALLOW_PRIVILEGED_DATABASE_ROLE"
SCHEMA = "public"


def role_of(url: str) -> str | None:
    """The role a URL connects as (None: libpq's default, the operating-system user)."""
    return make_url(url).username or None


def table_privileges(table: Table) -> tuple[str, ...]:
    return tuple(table.info.get("app_privileges", APP_DEFAULT_PRIVILEGES))


def app_grants(metadata: MetaData) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(table, privileges) for every table of ``metadata`` (Keel's: :data:`api.models.metadata`),
    in a stable order."""
    for name in sorted(metadata.tables):
        yield name, table_privileges(metadata.tables[name])


_DEFINER_FUNCTIONS = """
SELECT p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = %s::regnamespace AND p.prosecdef AND p.prorettype <> 'trigger'::regtype
ORDER BY 1
"""


@dataclass(frozen=True)
class RolesResult:
    app_role: str
    created: bool
    granted: bool


def apply_roles(
    admin_url: str, app_url: str, *, audit_retention_days: int, metadata: MetaData
) -> RolesResult:
    """What ``keel db upgrade`` does after the migrations, as the owner (in one transaction).

    Writes the owner-only settings the database enforces (``keel_settings``), then — when the
    application connects as a role other than the owner — creates that role if it is missing and
    gives it exactly its grants. When both URLs name one role (no ``KEEL_ADMIN_DATABASE_URL``),
    there is nothing to grant: the owner can do everything, and ``keel serve`` says so.
    """
    app_role = role_of(app_url)
    with psycopg.connect(libpq_url(admin_url)) as conn, conn.transaction():
        conn.execute(
            "UPDATE keel_settings SET audit_retention_days = %s, updated_at = now() WHERE id = 1",
            (audit_retention_days,),
        )
        owner = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
        if app_role is None or app_role == owner:
            return RolesResult(app_role=owner, created=False, granted=False)
        created = _ensure_role(conn, app_role, make_url(app_url).password)
        _take_back_ownership(conn, app_role)
        _grant(conn, app_role, metadata)
    return RolesResult(app_role=app_role, created=created, granted=True)


def _ensure_role(conn: psycopg.Connection, role: str, password: str | None) -> bool:
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        return False
    statement = sql.SQL(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    ).format(sql.Identifier(role))
    if password:
        # Sent already hashed (SCRAM), so the clear password never reaches the server's logs.
        encrypted = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        statement = statement + sql.SQL(" PASSWORD {}").format(sql.Literal(encrypted.decode()))
    conn.execute(statement)
    return True


def _take_back_ownership(conn: psycopg.Connection, role: str) -> None:
    """A deployment from before the two roles: the application role owns the tables. The owner
    takes them (``REASSIGN OWNED``); it needs the privileges of that role to do so."""
    owns = conn.execute(
        "SELECT 1 FROM pg_class WHERE relnamespace = %s::regnamespace AND relowner = %s::regrole LIMIT 1",
        (SCHEMA, role),
    ).fetchone()
    if owns:
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))


def _grant(conn: psycopg.Connection, role: str, metadata: MetaData) -> None:
    who, schema = sql.Identifier(role), sql.Identifier(SCHEMA)
    database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), who))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, who))
    # Nobody but the owner creates objects where the owner's SECURITY DEFINER functions look
    # (Postgres 15 and later revoke it from PUBLIC already; 14 did not).
    conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(schema))
    conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(schema, who))
    # Exactly what it needs: whatever it had is taken away first (TRUNCATE on the audit log, say).
    conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(schema, who))
    conn.execute(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(schema, who))
    conn.execute(sql.SQL("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {} FROM {}").format(schema, who))
    for table, privileges in app_grants(metadata):
        if privileges:
            conn.execute(
                sql.SQL("GRANT {} ON TABLE {}.{} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                    schema,
                    sql.Identifier(table),
                    who,
                )
            )
    conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, who))
    for (function,) in conn.execute(_DEFINER_FUNCTIONS, (SCHEMA,)).fetchall():
        # Only the roles granted it run an owner's function (never PUBLIC).
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(sql.SQL(function)))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(function), who))


class PrivilegedRoleError(RuntimeError):
    """The application is connected as a role that could undo the audit log."""


_ROLE_FACTS = """
SELECT current_user, r.rolsuper,
       EXISTS (
           SELECT 1 FROM pg_class c
           WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p')
             AND c.relname = ANY(%(tables)s) AND pg_has_role(current_user, c.relowner, 'USAGE')
       ),
       has_schema_privilege(current_user, %(schema)s, 'CREATE')
FROM pg_roles r WHERE r.rolname = current_user
"""


def privileged_reason(conn: psycopg.Connection, metadata: MetaData) -> str | None:
    """Why the connection's role must not run Keel: a superuser, the owner of its tables (those of
    ``metadata``), or a role that may create objects in its schema."""
    row = conn.execute(_ROLE_FACTS, {"schema": SCHEMA, "tables": sorted(metadata.tables)}).fetchone()
    assert row is not None
    role, superuser, owner, creates = row
    if superuser:
        return f"the database role {role!r} is a superuser"
    if owner:
        return f"the database role {role!r} owns Keel's tables"
    if creates:
        # It could plant objects that the owner's SECURITY DEFINER functions would then run.
        return f"the database role {role!r} may create objects in the schema {SCHEMA!r}"
    return None


def refuse_privileged_role(database_url: str, *, allow: bool, what: str, metadata: MetaData) -> None:
    """Raise :class:`PrivilegedRoleError` when ``database_url`` connects as a superuser, as the
    owner of Keel's tables, or as a role that may create objects in Keel's schema (unless
    ``allow``: ``KEEL_ALLOW_PRIVILEGED_DATABASE_ROLE=true``)."""
    if allow:
        return
    with psycopg.connect(libpq_url(database_url)) as conn:
        reason = privileged_reason(conn, metadata)
    if reason is not None:
        raise PrivilegedRoleError(
            f"{what} refuses to start: {reason}, so it could undo the audit log's append-only "
            f"guarantee. Connect KEEL_DATABASE_URL as the application role and give the owner's "
            f"connection in KEEL_ADMIN_DATABASE_URL (`keel db upgrade` then creates the application "
            f"role and its grants). {OVERRIDE_SETTING}=true overrides this check (not recommended)."
        )
