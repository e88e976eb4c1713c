"""Who is calling, and from where: resolved once per request."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from api.audit.models import ActorType
from api.auth.models import PlatformRole
from api.members.models import OrgRole
from api.tokens.models import TokenKind


@dataclass(frozen=True, slots=True)
class Principal:
    """The bearer of a valid token."""

    token_id: uuid.UUID
    kind: TokenKind
    user_id: uuid.UUID | None = None
    email: str | None = None
    platform_role: PlatformRole | None = None
    #: For org ingest keys: the one organization the key writes to.
    organization_id: uuid.UUID | None = None
    #: A publishable key: it reaches only the routes marked ``api.auth.services.BROWSER``.
    publishable: bool = False
    #: The browser origins this ingest key is accepted from (None: none listed).
    allowed_origins: frozenset[str] | None = None

    @property
    def is_user(self) -> bool:
        return self.kind is TokenKind.user


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What every audit entry records about the request that caused it."""

    request_id: str | None
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class Actor:
    type: ActorType
    id: str | None
    name: str | None = None

    @classmethod
    def of(cls, principal: Principal, *, as_staff: bool = False) -> Actor:
        if principal.is_user:
            kind = ActorType.staff if as_staff else ActorType.user
            return cls(kind, str(principal.user_id), principal.email)
        return cls(ActorType.api_key, str(principal.token_id))

    @classmethod
    def system(cls, name: str = "keel") -> Actor:
        return cls(ActorType.system, None, name)


@dataclass(frozen=True, slots=True)
class OrgAccess:
    """A user's active membership of an organization they are acting on."""

    organization_id: uuid.UUID
    role: OrgRole
    principal: Principal
