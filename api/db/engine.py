"""Engines and sessions. URLs may be given as ``postgresql://``; Keel always speaks psycopg 3."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

T = TypeVar("T")


def sqlalchemy_url(url: str) -> str:
    """Normalize a Postgres URL to the ``postgresql+psycopg`` dialect."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"KEEL_DATABASE_URL must be a PostgreSQL URL, not {parsed.get_backend_name()!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same URL as plain libpq understands it (for psycopg connections outside SQLAlchemy)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_async_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    # No pre-ping (a round trip per checkout); connections are recycled and errors surface as 503.
    return create_async_engine(sqlalchemy_url(url), pool_size=pool_size, max_overflow=10, pool_recycle=1800)


def make_sync_engine(url: str) -> Engine:
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def run_with_engine(url: str, work: Callable[[AsyncEngine], Awaitable[T]], *, pool_size: int = 2) -> T:
    """The one blocking runner for the CLI, the flows and the demo: an engine for ``work(engine)``,
    disposed afterwards, on a fresh event loop."""

    async def main() -> T:
        engine = make_async_engine(url, pool_size=pool_size)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def run_in_session(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work(session)`` in one committed transaction (rolled back if it raises)."""

    async def in_session(engine: AsyncEngine) -> T:
        async with make_sessionmaker(engine)() as session, session.begin():
            return await work(session)

    return run_with_engine(url, in_session)
