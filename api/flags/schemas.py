from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from api.flags.evaluation import Reason, Stickiness
from api.schemas import Reason as ReasonText
from api.schemas import Struct

KEY_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"
FlagKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=100,
        pattern=KEY_PATTERN,
        description="1-100 letters, digits, `.`, `_`, `-` (not `.` or `..`); the rollout's hash group.",
        examples=["new-billing-page"],
    ),
]
Description = Annotated[str, msgspec.Meta(max_length=1000)]
Percentage = Annotated[
    int, msgspec.Meta(ge=0, le=100, description="Share of organizations (or users) on, 0-100.")
]


Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
ConstraintValue = Annotated[str, msgspec.Meta(max_length=1000, pattern=r"^[^\x00]*$")]
SegmentName = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=100, pattern=KEY_PATTERN, description="1-100 letters, digits, `.`, `_`, `-`."
    ),
]


class ConstraintIn(Struct):
    """One condition: ``field operator values`` (Unleash's operators and answers)."""

    field: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    operator: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    values: Annotated[list[ConstraintValue], msgspec.Meta(max_length=1000)] = []
    inverted: bool = False
    case_insensitive: bool = False


class RuleIn(Struct):
    """A targeting strategy: its segments' and its own constraints all hold, then its rollout."""

    name: Name
    constraints: Annotated[list[ConstraintIn], msgspec.Meta(max_length=50)] = []
    segments: Annotated[list[SegmentName], msgspec.Meta(max_length=20)] = []
    rollout_percentage: Percentage = 100
    stickiness: Stickiness = Stickiness.org


class VariantIn(Struct):
    name: Name
    weight: Annotated[int, msgspec.Meta(ge=0, le=1000, description="Out of 1000; all add up to 1000.")]
    #: Any JSON: what OFREP answers as the flag's value.
    value: Any = None


Rules = Annotated[list[RuleIn], msgspec.Meta(max_length=50)]
Variants = Annotated[list[VariantIn], msgspec.Meta(max_length=100)]


class FlagCreate(Struct):
    key: FlagKey
    description: Description = ""
    #: The kill switch. A new flag is on for nobody until the rollout or an override says so.
    enabled: bool = True
    rollout_percentage: Percentage = 0
    stickiness: Stickiness = Stickiness.org
    rules: Rules = []
    variants: Variants = []


class FlagUpdate(Struct):
    description: Description | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    rollout_percentage: Percentage | msgspec.UnsetType = msgspec.UNSET
    stickiness: Stickiness | msgspec.UnsetType = msgspec.UNSET
    #: ``false`` restores an archived flag.
    archived: bool | msgspec.UnsetType = msgspec.UNSET
    rules: Rules | msgspec.UnsetType = msgspec.UNSET
    variants: Variants | msgspec.UnsetType = msgspec.UNSET


class OverrideSet(Struct):
    enabled: bool
    reason: ReasonText
    #: The variant this org is served (a flag with variants).
    variant: Name | None = None


class SegmentCreate(Struct):
    name: SegmentName
    description: Description = ""
    constraints: Annotated[list[ConstraintIn], msgspec.Meta(max_length=50)] = []


class SegmentUpdate(Struct):
    description: Description | msgspec.UnsetType = msgspec.UNSET
    constraints: Annotated[list[ConstraintIn], msgspec.Meta(max_length=50)] | msgspec.UnsetType = (
        msgspec.UNSET
    )


class SegmentOut(msgspec.Struct):
    id: uuid.UUID
    name: str
    description: str
    constraints: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class SegmentPage(msgspec.Struct):
    items: list[SegmentOut]
    next_cursor: str | None


class ScheduleCreate(Struct):
    """``patch`` is what ``PATCH /v1/admin/flags/{key}`` takes, applied at ``at``."""

    at: datetime
    patch: FlagUpdate


class ScheduleOut(msgspec.Struct):
    id: uuid.UUID
    flag_key: str
    at: datetime
    patch: dict[str, Any]
    status: str
    applied_at: datetime | None
    error: str | None
    created_by: uuid.UUID | None
    created_at: datetime


class SchedulePage(msgspec.Struct):
    items: list[ScheduleOut]
    next_cursor: str | None


class StaleFlagOut(msgspec.Struct):
    key: str
    #: ``full_rollout`` / ``no_rollout`` (unchanged for 30 days) or ``not_evaluated`` (14 days).
    reasons: list[str]
    rollout_percentage: int
    updated_at: datetime
    last_evaluated_at: datetime | None


class StaleFlagsOut(msgspec.Struct):
    items: list[StaleFlagOut]


class FlagOut(msgspec.Struct):
    id: uuid.UUID
    key: str
    description: str
    enabled: bool
    rollout_percentage: int
    stickiness: Stickiness
    archived: bool
    archived_at: datetime | None
    created_by: uuid.UUID | None
    updated_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    rules: list[dict[str, Any]] = []
    variants: list[dict[str, Any]] = []


class OverrideOut(msgspec.Struct):
    flag_key: str
    organization_id: uuid.UUID
    organization_name: str
    enabled: bool
    reason: str
    created_by: uuid.UUID | None
    updated_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    variant: str | None = None


class FlagDetail(FlagOut):
    overrides: list[OverrideOut] = []


class FlagPage(msgspec.Struct):
    items: list[FlagOut]
    next_cursor: str | None


class FlagsOut(msgspec.Struct):
    """Every flag's answer for the organization (archived flags answer false)."""

    flags: dict[str, bool]
    #: The variant served, for each flag that is on and has variants.
    variants: dict[str, str] = {}


class EvaluationOut(msgspec.Struct, omit_defaults=True):
    """``variant``, ``value`` and ``rule`` appear only when they have something to say."""

    key: str
    enabled: bool
    reason: Reason
    #: The variant served (flags with variants), its value, and the rule that decided.
    variant: str | None = None
    value: Any = None
    rule: str | None = None


class OrgFlagState(msgspec.Struct):
    """One live flag as the organization sees it (without a user id), for the admin org view."""

    key: str
    enabled: bool
    reason: Reason
    bucket: int | None
    rollout_percentage: int
    stickiness: Stickiness
    rule: str | None = None
    variant: str | None = None
    #: One sentence: why (the rule, segment, constraint or bucket that decided).
    explanation: str = ""
