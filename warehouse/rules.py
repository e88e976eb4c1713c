"""Keel's business rules, each defined once: the API, the reconciliation and the marts all use these.

Each rule is one SQL expression over named parameters, written so that Postgres and DuckDB read
it alike. The warehouse build creates every rule as a DuckDB macro (``CREATE MACRO keel_…``), so
the marts, and analysts in ``keel warehouse sql``, call them by name; Postgres queries in ``api``
render the same expression with their own columns (:meth:`Rule.sql`). Where a caller decides in
memory (the reconciliation, over Stripe's objects), the Python function beside the rule applies
the same constants; ``tests/test_rules.py`` proves every pair agrees.

The rules (reasons in ``docs/warehouse.md`` and ``docs/billing.md``):

- **A live organization** is one not deleted (``deleted_at`` is null). Suspension is a status of a
  live organization: it refuses its members and keys (403), staff still act on it, the marts
  still score it.
- **An ended subscription** is ``canceled`` or ``incomplete_expired`` (Stripe never revives one);
  **in good standing** is ``trialing``, ``active`` or ``past_due`` (it still gives the product).
- **The current subscription** of an organization is the greatest by :data:`SUBSCRIPTION_RANK`:
  one not ended before any ended one, then the most recently created, then the greatest
  subscription id.
- **An active member** (one who uses a seat) has a membership whose status is ``active``.
- **Over the seat limit**: more active members than the seats of a current subscription in good
  standing.
- **An active user** is an identified user (``user_id``) with an event in the window; an id an
  ``alias`` call merged into a user id (``identity_aliases``: the event's user id, else its
  anonymous id) counts as that user, one person counted once; any other anonymous id counts as
  no one. **Monthly** is the 30 UTC days ending on the day counted for (weekly: 7).

This module imports nothing from ``api`` or ``pipelines`` (the import direction): ``api`` imports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

#: Subscription statuses Stripe never leaves (a subscription in one has ended).
SUBSCRIPTION_ENDED = ("canceled", "incomplete_expired")
#: Subscription statuses that still give the organization its product (Stripe retries past_due).
SUBSCRIPTION_IN_GOOD_STANDING = ("trialing", "active", "past_due")
#: The membership status of a member who uses a seat.
MEMBERSHIP_ACTIVE = "active"
#: The trailing windows of active-user figures, in UTC days ending on (and including) the day.
WAU_DAYS = 7
MAU_DAYS = 30

_PARAM = re.compile(r"\b[a-z_][a-z0-9_]*\b")
_SIMPLE = re.compile(r'[\w."]+')


@dataclass(frozen=True)
class Rule:
    """One rule: ``body`` is a SQL expression over ``params`` (Postgres and DuckDB alike)."""

    name: str
    params: tuple[str, ...]
    body: str
    description: str

    def sql(self, *args: str) -> str:
        """The expression, parenthesized, with each parameter replaced by the SQL given for it."""
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments ({', '.join(self.params)})")
        values = {p: a if _SIMPLE.fullmatch(a) else f"({a})" for p, a in zip(self.params, args, strict=True)}
        # Literals ('…') are left alone: only words outside quotes are parameters.
        parts = re.split(r"('(?:[^']|'')*')", self.body)
        rendered = "".join(
            part if i % 2 else _PARAM.sub(lambda m: values.get(m.group(0), m.group(0)), part)
            for i, part in enumerate(parts)
        )
        return f"({rendered})"

    def macro(self) -> str:
        """The DuckDB statement that defines this rule as a macro of the same name."""
        return f"CREATE OR REPLACE MACRO {self.name}({', '.join(self.params)}) AS {self.sql(*self.params)}"


def _literals(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


ORG_IS_LIVE = Rule(
    "keel_org_is_live",
    ("deleted_at",),
    "deleted_at IS NULL",
    "An organization is live until it is deleted (a suspended one is live, and refused).",
)
SUBSCRIPTION_IS_ENDED = Rule(
    "keel_subscription_is_ended",
    ("status",),
    f"status IN ({_literals(SUBSCRIPTION_ENDED)})",
    "The subscription has ended: Stripe never revives it.",
)
SUBSCRIPTION_IS_IN_GOOD_STANDING = Rule(
    "keel_subscription_is_in_good_standing",
    ("status",),
    f"status IN ({_literals(SUBSCRIPTION_IN_GOOD_STANDING)})",
    "The subscription still gives the organization its product.",
)
SUBSCRIPTION_RANK = Rule(
    "keel_subscription_rank",
    ("status", "created", "subscription_id"),
    f"row(NOT {SUBSCRIPTION_IS_ENDED.sql('status')}, created, subscription_id)",
    "An organization's current subscription is the one of greatest rank (ORDER BY … DESC): "
    "not ended first, then the most recently created, then the greatest subscription id.",
)
MEMBERSHIP_IS_ACTIVE = Rule(
    "keel_membership_is_active",
    ("status",),
    f"status = {_literals([MEMBERSHIP_ACTIVE])}",
    "The member is active: the membership uses a seat.",
)
OVER_SEAT_LIMIT = Rule(
    "keel_over_seat_limit",
    ("status", "active_members", "seats"),
    f"coalesce({SUBSCRIPTION_IS_IN_GOOD_STANDING.sql('status')} AND active_members > seats, false)",
    "More active members than the seats of a current subscription in good standing.",
)
ACTIVE_USER = Rule(
    "keel_active_user",
    ("user_id", "anonymous_id", "aliased_user_id"),
    # anonymous_id is a parameter (unused) so that every caller shows what is left out.
    "coalesce(aliased_user_id, user_id)",
    "Who an event counts as, for active users: the user id an alias call merged its id into (its"
    " user id, else its anonymous id), else its identified user; an anonymous id no alias names"
    " counts as no one.",
)
IN_TRAILING_DAYS = Rule(
    "keel_in_trailing_days",
    ("day", "as_of", "days"),
    "day > as_of - days AND day <= as_of",
    "The day is one of the ``days`` UTC days ending on (and including) as_of.",
)
IN_MAU_WINDOW = Rule(
    "keel_in_mau_window",
    ("day", "as_of"),
    IN_TRAILING_DAYS.sql("day", "as_of", str(MAU_DAYS)),
    f"The day counts toward as_of's monthly active users: the {MAU_DAYS} UTC days ending on as_of.",
)

#: Every rule, in the order the build defines them.
RULES = (
    ORG_IS_LIVE,
    SUBSCRIPTION_IS_ENDED,
    SUBSCRIPTION_IS_IN_GOOD_STANDING,
    SUBSCRIPTION_RANK,
    MEMBERSHIP_IS_ACTIVE,
    OVER_SEAT_LIMIT,
    ACTIVE_USER,
    IN_TRAILING_DAYS,
    IN_MAU_WINDOW,
)


# -- the same rules, for callers that decide in memory ---------------------------------------------


def org_is_live(deleted_at: datetime | None) -> bool:
    return deleted_at is None


def subscription_is_ended(status: str) -> bool:
    return status in SUBSCRIPTION_ENDED


def subscription_rank(status: str, created: Any, subscription_id: str) -> tuple[bool, Any, str]:
    """:data:`SUBSCRIPTION_RANK` as a Python key (tuples compare as SQL rows do)."""
    return (not subscription_is_ended(status), created, subscription_id)


T = TypeVar("T")


def current_subscription(subs: Sequence[T], *, created: str = "created") -> T:
    """The current one of an organization's subscriptions (objects with ``status``,
    ``stripe_subscription_id`` and the attribute named by ``created``)."""
    return max(
        subs,
        key=lambda s: subscription_rank(
            s.status,  # type: ignore[attr-defined]
            getattr(s, created),
            s.stripe_subscription_id,  # type: ignore[attr-defined]
        ),
    )


def over_seat_limit(status: str | None, active_members: int, seats: int | None) -> bool:
    return status in SUBSCRIPTION_IN_GOOD_STANDING and seats is not None and active_members > seats


def active_user(user_id: str | None, anonymous_id: str | None, aliased_user_id: str | None) -> str | None:
    """:data:`ACTIVE_USER`: who an event counts as (``aliased_user_id``: the user id an alias call
    merged the event's user id, else its anonymous id, into)."""
    return aliased_user_id if aliased_user_id is not None else user_id


def in_mau_window(day: date, as_of: date) -> bool:
    return 0 <= (as_of - day).days < MAU_DAYS
