from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from api.members.models import MembershipStatus, OrgRole
from api.schemas import Email, Name, Struct


class MemberInvite(Struct):
    email: Email
    role: OrgRole
    name: Name | None = None


class MemberUpdate(Struct):
    role: OrgRole


class MemberOut(msgspec.Struct):
    user_id: uuid.UUID
    email: str
    name: str | None
    role: OrgRole
    status: MembershipStatus
    invited_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class MemberPage(msgspec.Struct):
    items: list[MemberOut]
    next_cursor: str | None
