"""Who belongs to which organization, in which role.

The schema changes only through the migrations in ``api/db/migrations/``; every domain's
models are registered on one metadata by :mod:`api.models`.
"""

from __future__ import annotations

import enum
import uuid

from sqlalchemy import ForeignKey, Index, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.auth.models import User
from api.db.base import Base, IdMixin, TimestampMixin, db_enum
from api.orgs.models import Organization


class OrgRole(enum.StrEnum):
    owner = "owner"
    admin = "admin"
    billing = "billing"
    member = "member"
    viewer = "viewer"


class MembershipStatus(enum.StrEnum):
    invited = "invited"
    active = "active"
    removed = "removed"


class Membership(IdMixin, TimestampMixin, Base):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("organization_id", "user_id"),
        Index("ix_memberships_user_id", "user_id"),
        # The members page (api/members/services.py): an organization's members in id order.
        Index("ix_memberships_organization_id_id", "organization_id", "id"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Organization.id))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(User.id))
    role: Mapped[OrgRole] = mapped_column(db_enum(OrgRole, "org_role"))
    status: Mapped[MembershipStatus] = mapped_column(
        db_enum(MembershipStatus, "membership_status"), default=MembershipStatus.invited
    )
    invited_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey(User.id))
