"""Creating users outside the API (the CLI and the demo): a user, optionally staff, and a token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.auth.context import Actor, Principal
from api.auth.models import PlatformRole, User, UserStatus
from api.emails import normalize_email
from api.errors import Conflict
from api.members.services import find_user_by_email
from api.tokens.models import TokenKind
from api.tokens.services import create_token


@dataclass(frozen=True)
class CreatedUser:
    user_id: uuid.UUID
    email: str
    token: str
    token_id: uuid.UUID
    platform_role: PlatformRole | None

    def principal(self) -> Principal:
        """The principal this user's new token authenticates as."""
        return Principal(
            token_id=self.token_id, kind=TokenKind.user, user_id=self.user_id, email=self.email,
            platform_role=self.platform_role,
        )  # fmt: skip


async def create_user_with_token(
    session: AsyncSession,
    *,
    email: str,
    name: str | None,
    platform_role: PlatformRole | None,
    token_name: str = "cli",
    actor: Actor | None = None,
) -> CreatedUser:
    actor = actor or Actor.system("keel-cli")
    email = normalize_email(email)
    if await find_user_by_email(session, email) is not None:
        raise Conflict(f"a user with the email {email} already exists")
    user = User(email=email, name=name, platform_role=platform_role, status=UserStatus.active)
    session.add(user)
    await session.flush()
    await audit.record(
        session, action="user.created", actor=actor, ctx=None, organization_id=None,
        resource_type="user", resource_id=user.id,
        after={"email": email, "platform_role": platform_role.value if platform_role else None},
    )  # fmt: skip
    token, secret = await create_token(
        session, kind=TokenKind.user, name=token_name, actor=actor, ctx=None, user_id=user.id
    )
    return CreatedUser(
        user_id=user.id, email=email, token=secret, token_id=token.id, platform_role=platform_role
    )
