"""The org-role matrix (architecture page, section 4), in one place."""

from __future__ import annotations

import enum

from api.auth.models import PlatformRole
from api.members.models import OrgRole


class Permission(enum.StrEnum):
    read_org = "read_org"  # org, members, flags, analytics
    manage_org = "manage_org"  # update org; manage members (not owners), keys, webhooks
    read_audit = "read_audit"
    read_billing = "read_billing"
    manage_billing = "manage_billing"
    manage_owners = "manage_owners"  # manage owners, delete org


ROLE_PERMISSIONS: dict[OrgRole, frozenset[Permission]] = {
    OrgRole.owner: frozenset(Permission),
    OrgRole.admin: frozenset(
        {Permission.read_org, Permission.manage_org, Permission.read_audit, Permission.read_billing}
    ),
    OrgRole.billing: frozenset({Permission.read_org, Permission.read_billing, Permission.manage_billing}),
    OrgRole.member: frozenset({Permission.read_org}),
    OrgRole.viewer: frozenset({Permission.read_org}),
}


class StaffPermission(enum.StrEnum):
    read = "read"  # every admin view
    operate = "operate"  # retry deliveries, reprocess inbound events
    administer = "administer"  # platform roles, suspensions, flag definitions, platform keys


STAFF_PERMISSIONS: dict[PlatformRole, frozenset[StaffPermission]] = {
    PlatformRole.admin: frozenset(StaffPermission),
    PlatformRole.support: frozenset({StaffPermission.read, StaffPermission.operate}),
}


def role_allows(role: OrgRole, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]
