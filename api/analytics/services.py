"""Analytics read from the warehouse (DuckDB), off the event loop; never from the raw tables."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from api.analytics.schemas import ActivityDay, ActivityOut, HealthOut
from api.errors import NotFound, ServiceUnavailable, ValidationFailed
from warehouse import queries

MAX_RANGE_DAYS = 366
T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a warehouse query off the event loop; a missing warehouse is a 503, said plainly."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except queries.WarehouseMissing:
        raise ServiceUnavailable(
            "analytics are not built yet: the build-warehouse flow has not run", retry_after=None
        ) from None


async def activity(
    warehouse: Path, organization_id: uuid.UUID, start: date | None, end: date | None
) -> ActivityOut:
    as_of = await in_thread(queries.as_of, warehouse)
    end = end or as_of
    start = start or end - timedelta(days=29)
    if start > end:
        raise ValidationFailed("`from` must be on or before `to`", field="from")
    if (end - start).days >= MAX_RANGE_DAYS:
        raise ValidationFailed(f"ask for at most {MAX_RANGE_DAYS} days at a time", field="to")
    frame = await in_thread(queries.org_activity, warehouse, str(organization_id), start, end)
    return ActivityOut(
        organization_id=organization_id,
        start=start,
        end=end,
        as_of=as_of,
        days=[ActivityDay(**row) for row in frame.to_dicts()],
    )


async def health(warehouse: Path, organization_id: uuid.UUID) -> HealthOut:
    as_of = await in_thread(queries.as_of, warehouse)
    frame = await in_thread(queries.org_health, warehouse, str(organization_id))
    if frame.is_empty():
        raise NotFound("no health score for this organization yet: the warehouse has not seen it")
    row = frame.to_dicts()[0]
    return HealthOut(as_of=as_of, **{**row, "organization_id": uuid.UUID(row["organization_id"])})
