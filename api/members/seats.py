"""Who uses a seat: an active member (``warehouse.rules.MEMBERSHIP_IS_ACTIVE``), as the billing
screen, the reconciliation and the marts count them."""

from __future__ import annotations

from api import rules as api_rules
from api.members.models import Membership
from warehouse import rules

#: ``WHERE`` clause: the membership (the ``memberships`` row of the query) uses a seat.
ACTIVE_MEMBER = api_rules.clause(rules.MEMBERSHIP_IS_ACTIVE, Membership.status)
