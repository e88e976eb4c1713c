"""Signing the audit chains' heads (the hourly ``audit-checkpoints`` flow's one step)."""

from __future__ import annotations

from typing import Any

from api.settings import Settings


def sign_audit_checkpoints(settings: Settings, database_url: str) -> list[dict[str, Any]]:
    """Sign every chain whose head moved since its last signed checkpoint; one ``{chain, seq}`` each.

    The key is the API's (``KEEL_AUDIT_SIGNING_KEY``, its file, or the data dir's); a chain that did
    not move is left alone, so an idle organization gets no new checkpoint."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    from api.audit.checkpoints import load_signing_key, sign_moved_heads
    from api.db.engine import make_sessionmaker, run_with_engine

    key = load_signing_key(settings)

    async def run(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with make_sessionmaker(engine)() as session, session.begin():
            signed = await sign_moved_heads(session, key=key)
            return [{"chain": c.chain_key, "seq": c.seq} for c in signed]

    result: list[dict[str, Any]] = run_with_engine(database_url, run, pool_size=1)
    return result
