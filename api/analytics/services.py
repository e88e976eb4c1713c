"""Analytics read from the warehouse (DuckDB), off the event loop; never from the raw tables."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import msgspec

from api.analytics.schemas import ActivityDay, ActivityOut, HealthOut
from api.errors import NotFound, ServiceUnavailable, ValidationFailed

if TYPE_CHECKING:
    from types import ModuleType

MAX_RANGE_DAYS = 366
T = TypeVar("T")


def warehouse_queries() -> ModuleType:
    """:mod:`warehouse.queries`, imported on the first analytics request: it brings polars and
    duckdb (~70 MB) that an API process serving only events and orgs never needs."""
    from warehouse import queries

    return queries


def warehouse_report() -> ModuleType:
    from warehouse import report

    return report


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a warehouse query off the event loop; a missing warehouse is a 503, said plainly."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except warehouse_queries().WarehouseMissing:
        raise ServiceUnavailable(
            "analytics are not built yet: the build-warehouse flow has not run", retry_after=None
        ) from None


async def activity(
    warehouse: Path, organization_id: uuid.UUID, start: date | None, end: date | None
) -> ActivityOut:
    queries = warehouse_queries()
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
    queries = warehouse_queries()
    as_of = await in_thread(queries.as_of, warehouse)
    frame = await in_thread(queries.org_health, warehouse, str(organization_id))
    if frame.is_empty():
        raise NotFound("no health score for this organization yet: the warehouse has not seen it")
    return msgspec.convert({**frame.to_dicts()[0], "as_of": as_of}, HealthOut)
