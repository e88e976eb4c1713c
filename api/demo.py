"""The demo: a few organizations with members, roles and ingest keys, made through the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.context import Actor, OrgAccess, Principal
from api.auth.models import PlatformRole
from api.demo_events import generate
from api.events.services import Origin, PartitionKeeper, ingest
from api.members import services as members
from api.members.models import MembershipStatus, OrgRole
from api.orgs import services as orgs
from api.orgs.models import Organization
from api.tokens.models import ApiToken, TokenKind
from api.tokens.services import create_token, revoke_token
from api.users import create_user_with_token
from api.webhooks.endpoints import create_endpoint, update_endpoint
from api.webhooks.schemas import EndpointCreate, EndpointUpdate

DEMO_ORGS = [
    # slug, name, member count, activity trend over the sixty days of events
    ("acme", "Acme Corp", 120, "growing"),
    ("globex", "Globex", 80, "steady"),
    ("initech", "Initech", 60, "declining"),
    ("umbrella", "Umbrella Health", 25, "new"),
]
EVENT_BATCH = 1000
ROLES = [OrgRole.admin, OrgRole.billing, OrgRole.member, OrgRole.member, OrgRole.viewer]
ADMIN_EMAIL = "admin@keel.demo"
#: Names of the admin tokens the demo and ``keel dev`` issue (the ones a re-issue revokes).
ADMIN_TOKEN_NAMES = ("demo", "keel dev")
#: The demo org whose second endpoint always fails (when a receiver is given).
FAILING_ORG = "initech"
WEBHOOK_EVENT_TYPES = ["member.*", "org.*"]
#: Paths of ``keel dev``'s demo receiver: one answers 2xx, the other always fails.
RECEIVER_OK_PATH, RECEIVER_FAIL_PATH = "/ok/", "/fail/"


@dataclass
class DemoSummary:
    seeded: bool
    admin_email: str = ADMIN_EMAIL
    admin_token: str | None = None
    orgs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __rich__(self) -> str:
        return self.describe(secrets=True)

    def headline(self) -> str:
        """The summary without its secrets (``keel dev`` prints those in its banner)."""
        return self.describe(secrets=False)

    def describe(self, *, secrets: bool) -> str:
        if not self.seeded:
            return "[yellow]the database already has organizations: demo not seeded again[/]"
        lines = [f"[green]demo seeded:[/] {len(self.orgs)} organizations"]
        for slug, info in self.orgs.items():
            lines.append(f"  {slug:<10} {info['members']:>3} members {info['events']:>7} events")
        if secrets:
            # One key a line, short enough not to wrap in an 80-column terminal.
            lines.extend(f"  ingest key {slug:<10} {key}" for slug, key in self.ingest_keys().items())
            if self.admin_token:
                lines.append(f"  platform admin {self.admin_email}")
                lines.append(f"  admin token {self.admin_token}")
        return "\n".join(lines)

    def ingest_keys(self) -> dict[str, str]:
        return {slug: str(info["ingest_key"]) for slug, info in self.orgs.items()}


async def is_empty(session: AsyncSession) -> bool:
    return (await session.scalar(select(func.count()).select_from(Organization))) == 0


async def seed_async(
    session: AsyncSession, *, force: bool = False, receiver: DemoReceiverUrls | None = None
) -> DemoSummary:
    """The demo, when the database has no organizations (or ``force``). With ``receiver`` (``keel
    dev``'s local webhook receiver) every org gets an endpoint that really receives, and
    ``FAILING_ORG`` one more that always fails; they exist before the members are invited, so the
    invitations are delivered. Without it, the endpoints point at unresolvable example hosts."""
    if not force and not await is_empty(session):
        return DemoSummary(seeded=False)
    system = Actor.system("keel-demo")
    summary = DemoSummary(seeded=True)
    admin = await create_user_with_token(
        session, email=summary.admin_email, name="Keel Admin", platform_role=PlatformRole.admin,
        token_name="demo", actor=system,
    )  # fmt: skip
    summary.admin_token = admin.token
    await create_user_with_token(
        session, email="support@keel.demo", name="Keel Support", platform_role=PlatformRole.support,
        token_name="demo", actor=system,
    )  # fmt: skip
    for slug, name, size, trend in DEMO_ORGS:
        owner = await create_user_with_token(
            session, email=f"owner@{slug}.example", name=f"{name} Owner", platform_role=None,
            token_name="demo", actor=system,
        )  # fmt: skip
        principal = owner.principal()
        org = await orgs.create_org(session, principal=principal, ctx=None, name=name, slug=slug)
        access = OrgAccess(organization_id=org.id, role=OrgRole.owner, principal=principal)
        targets = [(f"https://hooks.{slug}.example/keel", "demo receiver")]
        if receiver is not None:
            targets = [(receiver.ok(slug), "demo receiver (keel dev, answers 204)")]
            if slug == FAILING_ORG:
                targets.append(
                    (receiver.fail(slug), "demo receiver that always fails (keel dev, answers 500)")
                )
        for url, description in targets:
            await create_endpoint(
                session, org_id=org.id, allow_private=receiver is not None, actor=Actor.of(principal),
                ctx=None,
                data=EndpointCreate(url=url, description=description, event_types=WEBHOOK_EVENT_TYPES),
            )  # fmt: skip
        invited = []
        for i in range(1, size):
            membership, _ = await members.invite(
                session, access=access, actor=Actor.of(principal), ctx=None,
                email=f"user{i}@{slug}.example", name=f"User {i}", role=ROLES[i % len(ROLES)],
                status=MembershipStatus.active,
            )  # fmt: skip
            invited.append(membership)
        key, ingest = await create_token(
            session, kind=TokenKind.org_ingest, name="demo", actor=system, ctx=None, organization_id=org.id
        )
        user_ids = [str(owner.user_id), *(str(m.user_id) for m in invited)]
        events = await _send_events(session, key, user_ids, trend, seed=len(summary.orgs))
        summary.orgs[slug] = {
            "id": str(org.id),
            "members": size,
            "ingest_key": ingest,
            "trend": trend,
            "events": events,
        }
    return summary


@dataclass(frozen=True)
class DemoReceiverUrls:
    """Where the demo's endpoints deliver: ``{base}/ok/<slug>`` answers 2xx, ``{base}/fail/<slug>`` fails."""

    base: str

    def ok(self, slug: str) -> str:
        return f"{self.base}{RECEIVER_OK_PATH}{slug}"

    def fail(self, slug: str) -> str:
        return f"{self.base}{RECEIVER_FAIL_PATH}{slug}"


@dataclass(frozen=True)
class AdminToken:
    email: str
    token: str
    revoked: int


async def reissue_admin_token(session: AsyncSession) -> AdminToken:
    """A new token for the demo's platform admin (created once, here, when it does not exist);
    the admin's earlier demo/``keel dev`` tokens are revoked, since a token is shown only once."""
    from api.members.services import find_user_by_email

    system = Actor.system("keel-dev")
    user = await find_user_by_email(session, ADMIN_EMAIL)
    if user is None:
        created = await create_user_with_token(
            session, email=ADMIN_EMAIL, name="Keel Admin", platform_role=PlatformRole.admin,
            token_name="keel dev", actor=system,
        )  # fmt: skip
        return AdminToken(ADMIN_EMAIL, created.token, revoked=0)
    live = await session.scalars(
        select(ApiToken.id).where(
            ApiToken.user_id == user.id, ApiToken.kind == TokenKind.user, ApiToken.revoked_at.is_(None),
            ApiToken.name.in_(ADMIN_TOKEN_NAMES),
        )
    )  # fmt: skip
    revoked = 0
    for token_id in list(live):
        await revoke_token(
            session, token_id=token_id, kind=TokenKind.user, actor=system, ctx=None, user_id=user.id
        )
        revoked += 1
    _, secret = await create_token(
        session, kind=TokenKind.user, name="keel dev", actor=system, ctx=None, user_id=user.id
    )
    return AdminToken(ADMIN_EMAIL, secret, revoked=revoked)


async def repoint_demo_endpoints(session: AsyncSession, *, old_base: str, new_base: str) -> int:
    """When the receiver could not get its old port back: move the demo's endpoints (those under
    ``old_base``, and only those) to ``new_base``. Returns how many moved."""
    from api.webhooks.models import WebhookEndpoint

    moved = 0
    endpoints = await session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.url.startswith(old_base + "/"))
    )
    for endpoint in list(endpoints):
        await update_endpoint(
            session, org_id=endpoint.organization_id, endpoint_id=endpoint.id, allow_private=True,
            actor=Actor.system("keel-dev"), ctx=None,
            data=EndpointUpdate(url=new_base + endpoint.url[len(old_base):]),
        )  # fmt: skip
        moved += 1
    return moved


async def _send_events(
    session: AsyncSession, key: ApiToken, user_ids: list[str], trend: str, *, seed: int
) -> int:
    """The same ingest path product clients use, in batches, as the org's own ingest key."""
    principal = Principal(token_id=key.id, kind=TokenKind.org_ingest, organization_id=key.organization_id)
    partitions = PartitionKeeper()
    origin = Origin(ip=None, user_agent="keel-demo")
    accepted = 0
    batch: list[bytes] = []
    for raw in generate(user_ids, trend, seed=seed):
        batch.append(raw)
        if len(batch) == EVENT_BATCH:
            result = await ingest(session, batch, principal=principal, partitions=partitions, origin=origin)
            accepted += result.accepted
            batch = []
    if batch:
        accepted += (
            await ingest(session, batch, principal=principal, partitions=partitions, origin=origin)
        ).accepted
    return accepted


def seed(url: str, *, force: bool = False) -> DemoSummary:
    from api.db.engine import run_in_session

    return run_in_session(url, lambda s: seed_async(s, force=force))
