"""A live organization (``warehouse.rules.ORG_IS_LIVE``: not deleted), for every query and check.

A suspended organization is live: callers that serve its members or keys refuse it with 403 on
top of this; staff still act on it.
"""

from __future__ import annotations

import uuid
from typing import TypeGuard

from sqlalchemy.ext.asyncio import AsyncSession

from api import rules as api_rules
from api.errors import NotFound
from api.orgs.models import Organization
from warehouse import rules

#: ``WHERE`` clause: the organization (the ``organizations`` row of the query) is live.
LIVE = api_rules.clause(rules.ORG_IS_LIVE, Organization.deleted_at)


def is_live(org: Organization | None) -> TypeGuard[Organization]:
    return org is not None and rules.org_is_live(org.deleted_at)


async def get_live_org(session: AsyncSession, org_id: uuid.UUID, *, for_update: bool = False) -> Organization:
    """The organization, or 404 (deleted or unknown alike)."""
    org = await session.get(Organization, org_id, with_for_update=for_update)
    if not is_live(org):
        raise NotFound("organization not found")
    return org
