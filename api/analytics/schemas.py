from __future__ import annotations

import uuid
from datetime import date
from typing import Literal

import msgspec


class ActivityDay(msgspec.Struct):
    day: date
    events: int
    active_users: int
    new_users: int
    dau: int
    wau: int
    mau: int
    dau_mau: float | None


class ActivityOut(msgspec.Struct):
    organization_id: uuid.UUID
    start: date = msgspec.field(name="from")
    end: date = msgspec.field(name="to")
    as_of: date
    days: list[ActivityDay]


class HealthSignal(msgspec.Struct):
    """One signal behind a health score: a risk (points off) or an expansion signal (no points)."""

    kind: Literal["risk", "expansion"]
    points: int
    reason: str


class HealthOut(msgspec.Struct):
    organization_id: uuid.UUID
    name: str
    as_of: date
    score: int
    label: str
    reasons: list[str]
    wau_now: int
    wau_4w_ago: int | None
    wau_trend: float | None
    mau: int
    active_members: int
    seat_utilization: float | None
    billing_status: str | None
    owner_changes_30d: int
    key_churn_30d: int
    days_since_last_event: int | None
    webhook_attempts_7d: int = 0
    webhook_success_rate_7d: float | None = None
    webhook_endpoints_disabled_30d: int = 0
    #: Seats bought; more active members than that (on a live subscription) is ``over_seat_limit``.
    seats: int | None = None
    over_seat_limit: bool = False
    renewal_date: date | None = None
    trial_end: date | None = None
    #: Unrepaired discrepancies of the latest billing reconciliation run.
    open_discrepancies: int = 0
    signals: list[HealthSignal] = msgspec.field(default_factory=list)
