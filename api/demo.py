"""The demo: a few organizations with members, roles and ingest keys, made through the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.context import Actor, OrgAccess, Principal
from api.db.models import ApiToken, MembershipStatus, Organization, OrgRole, PlatformRole, TokenKind
from api.demo_events import generate
from api.events.services import Origin, PartitionKeeper, ingest
from api.members import services as members
from api.orgs import services as orgs
from api.tokens.services import create_token
from api.users import create_user_with_token
from api.webhooks.endpoints import create_endpoint
from api.webhooks.schemas import EndpointCreate

DEMO_ORGS = [
    # slug, name, member count, activity trend over the sixty days of events
    ("acme", "Acme Corp", 120, "growing"),
    ("globex", "Globex", 80, "steady"),
    ("initech", "Initech", 60, "declining"),
    ("umbrella", "Umbrella Health", 25, "new"),
]
EVENT_BATCH = 1000
ROLES = [OrgRole.admin, OrgRole.billing, OrgRole.member, OrgRole.member, OrgRole.viewer]


@dataclass
class DemoSummary:
    seeded: bool
    admin_email: str = "admin@keel.demo"
    admin_token: str | None = None
    orgs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __rich__(self) -> str:
        if not self.seeded:
            return "[yellow]the database already has organizations: demo not seeded (use --force)[/]"
        lines = [f"[green]demo seeded:[/] {len(self.orgs)} organizations"]
        for slug, info in self.orgs.items():
            lines.append(
                f"  {slug:<10} {info['members']:>3} members {info['events']:>7} events"
                f"  ingest key {info['ingest_key']}"
            )
        lines.append(f"  platform admin {self.admin_email}  token {self.admin_token}")
        return "\n".join(lines)


async def is_empty(session: AsyncSession) -> bool:
    return (await session.scalar(select(func.count()).select_from(Organization))) == 0


async def seed_async(session: AsyncSession, *, force: bool = False) -> DemoSummary:
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
        await create_endpoint(
            session, org_id=org.id, allow_private=False, actor=Actor.of(principal), ctx=None,
            data=EndpointCreate(url=f"https://hooks.{slug}.example/keel", description="demo receiver",
                                event_types=["member.*", "org.*"]),
        )  # fmt: skip
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
    from api.cli import run_in_session

    return run_in_session(url, lambda s: seed_async(s, force=force))
