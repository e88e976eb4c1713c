"""Running an outbound worker until it has nothing left to do: one loop for the webhook worker
(:mod:`api.webhooks.worker`) and the audit stream worker (:mod:`api.audit.streams.delivery`), for
tests, the benches and ``keel worker --until-idle``. It lives beside the webhook worker, which the
stream worker already builds on (lanes, names); both are ``api`` modules, as the import-linter
contracts want."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Protocol


class Drainable(Protocol):
    async def tick(self) -> int:
        """One round of claiming and delivering; how much it did (0: nothing was due)."""

    async def seconds_until_due(self, organization_id: uuid.UUID | None = None) -> float | None:
        """Seconds until the next work falls due (None: nothing is queued)."""


async def drain_until_idle(
    worker: Drainable,
    *,
    max_seconds: float = 60.0,
    done: Callable[[], bool] | None = None,
    horizon: float = 30.0,
    organization_id: uuid.UUID | None = None,
    poll: float = 0.2,
    name: str = "the worker",
) -> None:
    """Tick until nothing is due within ``horizon`` seconds (or ``done()`` says so). Waits, at most
    ``poll`` seconds at a time, for work scheduled inside the horizon (``organization_id``'s only,
    when given: other work is delivered meanwhile). TimeoutError past ``max_seconds``."""
    deadline = time.monotonic() + max_seconds
    while True:
        if await worker.tick():
            continue
        if done is not None and done():
            return
        wait = await worker.seconds_until_due(organization_id)
        if done is None and (wait is None or wait > horizon):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was not idle within {max_seconds} s")
        await asyncio.sleep(min(wait if wait is not None else poll, poll))
