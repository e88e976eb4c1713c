"""Test harness: one embedded Postgres and one live API server per test session.

Tests talk to the server over real HTTP (httpx) and inspect the database with a plain
synchronous engine. Each test makes its own users and organizations (unique names), so tests
never depend on one another's rows.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, insert, text

from api.auth import secrets
from api.auth.models import PlatformRole, User, UserStatus
from api.db.base import new_id
from api.members.models import Membership, MembershipStatus, OrgRole
from api.server import server_config
from api.tokens.models import ApiToken, TokenKind

ROLES = ("owner", "admin", "billing", "member", "viewer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a background thread, on a port chosen at run time, configured as
    ``keel serve`` is (``api.server.server_config``, with the app's own settings)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = server_config(app, app.state.settings, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_user(
    engine: Engine,
    *,
    platform_role: PlatformRole | None = None,
    email: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, str]:
    """Insert a user and a token for them (setup, not the thing under test). Returns (user_id, token)."""
    user_id = new_id()
    secret, prefix, digest = secrets.generate(TokenKind.user)
    with engine.begin() as conn:
        conn.execute(
            insert(User).values(
                id=user_id,
                email=email or f"{unique('user')}@test.example",
                name="Test User",
                platform_role=platform_role,
                status=UserStatus.active,
            )
        )
        conn.execute(
            insert(ApiToken).values(
                id=new_id(),
                kind=TokenKind.user,
                name="test",
                prefix=prefix,
                secret_hash=digest,
                user_id=user_id,
                expires_at=expires_at,
            )
        )
    return str(user_id), secret


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class OrgWorld:
    """An organization with one active member per role, and an ingest key."""

    id: str
    slug: str
    tokens: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)
    ingest_key: str = ""
    ingest_key_id: str = ""

    def headers(self, role: str) -> dict[str, str]:
        return auth(self.tokens[role])


def make_org(
    client: httpx.Client, engine: Engine, *, roles: tuple[str, ...] = ROLES, invite_through_api: bool = False
) -> OrgWorld:
    """An org with one active member per role. The members are written straight to the tables (setup,
    not the thing under test) unless ``invite_through_api``: then each is invited and accepts over
    HTTP, leaving the audit entries and events of a real invitation (tests of the org's audit chain)."""
    owner_id, owner_token = make_user(engine)
    slug = unique("org")
    response = client.post("/v1/orgs", json={"name": f"Org {slug}", "slug": slug}, headers=auth(owner_token))
    assert response.status_code == 201, response.text
    world = OrgWorld(id=response.json()["id"], slug=slug)
    world.tokens["owner"], world.user_ids["owner"] = owner_token, owner_id
    for role in roles:
        if role == "owner":
            continue
        user_id, token = make_user(engine)
        if invite_through_api:
            email = client.get("/v1/me", headers=auth(token)).json()["email"]
            invited = client.post(
                f"/v1/orgs/{world.id}/members", json={"email": email, "role": role}, headers=auth(owner_token)
            )
            assert invited.status_code == 201, invited.text
            accepted = client.post(f"/v1/orgs/{world.id}/members/accept", headers=auth(token))
            assert accepted.status_code == 201, accepted.text
            world.tokens[role], world.user_ids[role] = token, user_id
            continue
        with engine.begin() as conn:
            conn.execute(
                insert(Membership).values(
                    id=new_id(),
                    organization_id=world.id,
                    user_id=user_id,
                    role=OrgRole(role),
                    status=MembershipStatus.active,
                    invited_by=owner_id,
                )
            )
        world.tokens[role], world.user_ids[role] = token, user_id
    key = client.post(f"/v1/orgs/{world.id}/ingest-keys", json={"name": "test"}, headers=auth(owner_token))
    assert key.status_code == 201, key.text
    world.ingest_key, world.ingest_key_id = key.json()["token"], key.json()["id"]
    return world


def expire_token(engine: Engine, token: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE api_tokens SET expires_at = :t WHERE secret_hash = :h"),
            {"t": datetime.now(UTC) - timedelta(minutes=1), "h": secrets.digest(token)},
        )


def audit_rows(engine: Engine, **where: Any) -> list[dict[str, Any]]:
    clauses = " AND ".join(f"{k} = :{k}" for k in where) or "TRUE"
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT * FROM audit_log WHERE {clauses} ORDER BY recorded_at, seq"), where)
        return [dict(r._mapping) for r in rows]


def write_lake_rows(
    lake: Path, name: str, rows: list[dict[str, Any]], part: str, *, file: str | None = None
) -> None:
    """Rows of a lake table written as the exporter lays them out (``<lake>/<name>/<part>/<name>.parquet``,
    or ``file`` for its name: ``part`` may then be empty, as for a table exported by version)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from warehouse.lake_tables import LAKE_TABLES

    schema = LAKE_TABLES[name].arrow_schema
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    path = lake / name / part / (file or f"{name}.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def make_publishable_key(
    client: httpx.Client, world: OrgWorld, *, origins: list[str] | None = None
) -> tuple[str, str]:
    """A publishable key (``keel_pub_...``) of ``world``, optionally restricted to ``origins``:
    ``(secret, key id)``."""
    body: dict[str, Any] = {"name": "web", "publishable": True}
    if origins is not None:
        body["allowed_origins"] = origins
    key = client.post(f"/v1/orgs/{world.id}/ingest-keys", json=body, headers=world.headers("owner"))
    assert key.status_code == 201, key.text
    return key.json()["token"], key.json()["id"]
