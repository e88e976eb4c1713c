from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

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


class FlagCreate(Struct):
    key: FlagKey
    description: Description = ""
    #: The kill switch. A new flag is on for nobody until the rollout or an override says so.
    enabled: bool = True
    rollout_percentage: Percentage = 0
    stickiness: Stickiness = Stickiness.org


class FlagUpdate(Struct):
    description: Description | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    rollout_percentage: Percentage | msgspec.UnsetType = msgspec.UNSET
    stickiness: Stickiness | msgspec.UnsetType = msgspec.UNSET
    #: ``false`` restores an archived flag.
    archived: bool | msgspec.UnsetType = msgspec.UNSET


class OverrideSet(Struct):
    enabled: bool
    reason: ReasonText


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


class FlagDetail(FlagOut):
    overrides: list[OverrideOut] = []


class FlagPage(msgspec.Struct):
    items: list[FlagOut]
    next_cursor: str | None


class FlagsOut(msgspec.Struct):
    """Every flag's answer for the organization (archived flags answer false)."""

    flags: dict[str, bool]


class EvaluationOut(msgspec.Struct):
    key: str
    enabled: bool
    reason: Reason


class OrgFlagState(msgspec.Struct):
    """One live flag as the organization sees it (without a user id), for the admin org view."""

    key: str
    enabled: bool
    reason: Reason
    bucket: int | None
    rollout_percentage: int
    stickiness: Stickiness
