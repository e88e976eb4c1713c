"""Sixty days of believable product activity for the demo orgs, sent through the ingest path."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec

FEATURES = [
    # (event name, relative frequency, share of users who ever use it)
    ("dashboard.viewed", 30, 1.0),
    ("search.performed", 14, 0.9),
    ("report.created", 8, 0.6),
    ("report.exported", 5, 0.45),
    ("project.created", 3, 0.5),
    ("comment.added", 10, 0.7),
    ("integration.connected", 1, 0.15),
    ("billing.viewed", 1, 0.1),
]
DAYS = 60


def activity_level(trend: str, day_index: int) -> float:
    """How busy an org is on day ``day_index`` (0 = sixty days ago)."""
    progress = day_index / (DAYS - 1)
    if trend == "growing":
        return 0.55 + 0.6 * progress
    if trend == "declining":
        return 1.0 - 0.8 * progress
    if trend == "new":
        return 0.0 if day_index < DAYS - 21 else 0.9
    return 0.85


def generate(
    org_user_ids: list[str], trend: str, *, seed: int, now: datetime | None = None
) -> Iterator[bytes]:
    """Yield events as JSON bytes, oldest first: weekday rhythm, working hours, per-user habits."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    start = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    names = [f[0] for f in FEATURES]
    weights = [f[1] for f in FEATURES]
    # Each user has a habit (how often they show up) and a set of features they use at all.
    habits = {u: rng.betavariate(2, 3) for u in org_user_ids}
    uses = {
        u: {n for n, _, share in FEATURES if rng.random() < share} | {"dashboard.viewed"}
        for u in org_user_ids
    }
    encoder = msgspec.json.Encoder()
    for day_index in range(DAYS):
        day = start + timedelta(days=day_index)
        weekend = day.weekday() >= 5
        level = activity_level(trend, day_index) * (0.2 if weekend else 1.0)
        for user in org_user_ids:
            if rng.random() > habits[user] * level:
                continue
            for _ in range(rng.randint(3, 14)):
                name = rng.choices(names, weights)[0]
                if name not in uses[user]:
                    name = "dashboard.viewed"
                moment = day + timedelta(hours=rng.gauss(13, 2.5) % 24, seconds=rng.randint(0, 3599))
                if moment >= now:
                    continue
                yield encoder.encode(
                    {
                        "event": name,
                        "user_id": user,
                        "message_id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "timestamp": moment.isoformat(),
                        "properties": {
                            "plan_tier": "pro",
                            "source": rng.choice(["web", "web", "desktop", "api"]),
                        },
                        "context": {"library": {"name": "keel-demo", "version": "1.0"}},
                    }
                )
