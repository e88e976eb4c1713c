from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from api.members.models import OrgRole
from api.orgs.models import OrgStatus
from api.schemas import ExternalId, Name, Slug, Struct


class OrgCreate(Struct):
    name: Name
    slug: Slug
    external_id: ExternalId | None = None


class OrgUpdate(Struct):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    slug: Slug | msgspec.UnsetType = msgspec.UNSET
    #: null clears it.
    external_id: ExternalId | msgspec.UnsetType | None = msgspec.UNSET
    #: Replaces the org's traits as a whole (``group`` calls merge into them key by key).
    traits: Annotated[dict[str, Any], msgspec.Meta(max_length=200)] | msgspec.UnsetType = msgspec.UNSET


class OrgOut(msgspec.Struct):
    id: uuid.UUID
    name: str
    slug: str
    status: OrgStatus
    created_at: datetime
    updated_at: datetime
    external_id: str | None = None
    #: The latest traits (set by Segment `group` calls, merged key by key).
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    #: The caller's role in this organization.
    role: OrgRole | None = None


class OrgPage(msgspec.Struct):
    items: list[OrgOut]
    next_cursor: str | None
