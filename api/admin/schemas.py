from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from api.audit.schemas import AuditLogOut
from api.auth.models import PlatformRole
from api.billing.schemas import BillingOut
from api.flags.schemas import OrgFlagState, OverrideOut
from api.members.schemas import MemberPage
from api.orgs.models import OrgStatus
from api.schemas import Reason, Struct
from api.webhooks.schemas import FailingEndpoint


class SuspendRequest(Struct):
    reason: Reason


class PlatformRoleUpdate(Struct):
    platform_role: PlatformRole | None


class AdminOrgSummary(msgspec.Struct):
    id: uuid.UUID
    name: str
    slug: str
    status: OrgStatus
    created_at: datetime
    deleted_at: datetime | None
    active_members: int
    external_id: str | None = None


class OrgStatusOut(msgspec.Struct):
    id: uuid.UUID
    status: OrgStatus
    suspended_reason: str | None


class AdminOrgPage(msgspec.Struct):
    items: list[AdminOrgSummary]
    next_cursor: str | None


class AdminOrgView(msgspec.Struct):
    id: uuid.UUID
    name: str
    slug: str
    status: OrgStatus
    suspended_reason: str | None
    stripe_customer_id: str | None
    created_at: datetime
    deleted_at: datetime | None
    external_id: str | None
    #: The latest traits (Segment `group` calls).
    traits: dict[str, Any]
    #: The first 20 active and invited members; `next_cursor` continues at
    #: `GET /v1/admin/orgs/{org_id}/members?cursor=`.
    members: MemberPage
    active_members: int
    invited_members: int
    active_ingest_keys: int
    #: The newest 20 entries of the organization's audit log, as `GET …/audit-logs` shows them.
    recent_audit: list[AuditLogOut]
    #: Every live flag as this organization gets it (without a user id), read fresh.
    flags: list[OrgFlagState]
    #: This organization's overrides, archived flags' included.
    flag_overrides: list[OverrideOut]
    #: The billing screen as the organization sees it (from the mirror).
    billing: BillingOut
    #: Webhook endpoints that are disabled, failing now, or failed deliveries in the last 24 hours,
    #: each with its latest failed delivery ids.
    failing_endpoints: list[FailingEndpoint]


class UserOut(msgspec.Struct):
    id: uuid.UUID
    email: str
    name: str | None
    platform_role: PlatformRole | None
    status: str
