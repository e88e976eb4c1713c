"""The console's reads of the warehouse, kept in memory until the warehouse file changes.

The build replaces the DuckDB file atomically (``warehouse/build.py``), so its (path, size,
modification time) names one build: while it stays the same, the org health rows, the as-of day
and each org's activity series cannot change, and a page need not open the file again (opening
it and querying costs ~80 ms, most of a page's time). Reads go through ``warehouse.queries``, the
same functions the analytics API uses; a missing warehouse is ``None``, said on the page.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import msgspec

from api.analytics import services as analytics
from api.analytics.schemas import ActivityDay, HealthOut
from api.errors import ServiceUnavailable


@dataclass
class Build:
    """What the console has read of one warehouse build."""

    key: tuple[str, int, int]
    as_of: date
    health: dict[str, dict[str, Any]]
    activity: dict[tuple[str, int], list[ActivityDay]] = field(default_factory=dict)

    def health_of(self, org_id: uuid.UUID) -> HealthOut | None:
        row = self.health.get(str(org_id))
        return None if row is None else msgspec.convert({**row, "as_of": self.as_of}, HealthOut)


_current: Build | None = None


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


async def build(path: Path) -> Build | None:
    """The current build's cached reads (loaded on the first call after a rebuild)."""
    global _current
    key = _key(path)
    if key is None:
        return None
    if _current is not None and _current.key == key:
        return _current
    queries = analytics.warehouse_queries()

    def load() -> Build:
        frame = queries.org_health(path)
        return Build(key, queries.as_of(path), {str(r["organization_id"]): r for r in frame.to_dicts()})

    try:
        loaded = await analytics.in_thread(load)
    except ServiceUnavailable:
        return None
    _current = loaded
    return loaded


async def activity(current: Build, path: Path, org_id: uuid.UUID, days: int) -> list[ActivityDay]:
    """One org's daily activity over the ``days`` days ending at the build's as-of day."""
    cached = current.activity.get((str(org_id), days))
    if cached is not None:
        return cached
    start = current.as_of - timedelta(days=days - 1)
    frame = await analytics.in_thread(
        analytics.warehouse_queries().org_activity, path, str(org_id), start, current.as_of
    )
    found = [ActivityDay(**row) for row in frame.to_dicts()]
    current.activity[(str(org_id), days)] = found
    return found
