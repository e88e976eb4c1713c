from __future__ import annotations

import uuid

from litestar import Controller, get
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import services as auth
from api.auth.context import Principal
from api.auth.permissions import Permission, StaffPermission
from api.billing import services
from api.billing.schemas import BillingOut, ReconciliationOut


class BillingController(Controller):
    path = "/v1/orgs/{org_id:uuid}/billing"
    tags = ["billing"]

    @get(
        "/",
        summary="The billing screen: plan, status, seats and seats used, renewal, amount (from the mirror;"
        " owner, admin, billing)",
    )
    async def billing(self, org_id: uuid.UUID, db: AsyncSession, principal: Principal) -> BillingOut:
        await auth.org_access(db, principal, org_id, Permission.read_billing)
        return await services.billing_screen(db, org_id)


class AdminBillingController(Controller):
    path = "/v1/admin/billing"
    tags = ["admin", "billing"]

    @get(
        "/reconciliation",
        summary="The latest reconciliation run and its discrepancies (staff)",
        opt=auth.staff_only(StaffPermission.read),
    )
    async def reconciliation(self, db: AsyncSession, principal: Principal) -> ReconciliationOut:
        return await services.latest_reconciliation(db)
