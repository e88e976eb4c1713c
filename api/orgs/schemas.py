from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from api.members.models import OrgRole
from api.orgs.models import OrgStatus
from api.schemas import Name, Slug, Struct


class OrgCreate(Struct):
    name: Name
    slug: Slug


class OrgUpdate(Struct):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    slug: Slug | msgspec.UnsetType = msgspec.UNSET


class OrgOut(msgspec.Struct):
    id: uuid.UUID
    name: str
    slug: str
    status: OrgStatus
    created_at: datetime
    updated_at: datetime
    #: The caller's role in this organization.
    role: OrgRole | None = None


class OrgPage(msgspec.Struct):
    items: list[OrgOut]
    next_cursor: str | None
