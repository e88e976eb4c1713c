"""What each console page shows, read through the services the ``/v1/admin/…`` routes use.

The Org 360 page is a list of :data:`SECTIONS`: each a template under ``templates/sections/`` and
one loader that reads what the template shows. A new panel is one more entry. Staff reads are
audited as the API's are: the org view records ``staff.org_viewed`` (``admin.services.org_view``),
the health panel ``staff.health_viewed``, the health page ``staff.report_viewed``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from api.admin import services as admin
from api.audit import services as audit
from api.audit.streams import services as streams
from api.audit.verify import Split, verify
from api.audit.views import entry_out
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import STAFF_PERMISSIONS, StaffPermission
from api.billing.services import billing_screen, current_plans, latest_reconciliation
from api.console import warehouse as warehouse_reads
from api.console.chart import Point, activity_svg
from api.flags import services as flags
from api.flags.evaluation import Evaluation, Reason, Rule
from api.flags.models import FeatureFlag
from api.flags.store import definition, read_segments
from api.ingestion import queries as ingestion
from api.webhooks import deliveries, endpoints
from api.webhooks.models import InboundEvent

NOT_BUILT = "analytics are not built yet: the build-warehouse flow has not run"
NOT_SEEN = "no health score for this organization yet: the warehouse has not seen it"
#: Days of activity on the Org 360 chart.
CHART_DAYS = 90
#: Inbound Stripe events shown for one org.
INBOUND_SHOWN = 20
#: Webhook endpoints shown (with their 24-hour success rates).
ENDPOINTS_SHOWN = 50
#: Audit streams shown for one org (an org has a handful).
STREAMS_SHOWN = 50
#: Ingestion warnings shown for one org (a row per key, reason and day, counting its messages).
WARNINGS_SHOWN = 50
#: Health page orderings: the query value -> (column, descending).
HEALTH_SORTS: dict[str, tuple[str, bool]] = {
    "score": ("score", False),
    "name": ("name", False),
    "trend": ("wau_trend", False),
    "wau": ("wau_now", True),
}


def may(principal: Principal, permission: StaffPermission) -> bool:
    """Whether the page shows a control: the same table the server enforces (``require_staff``)."""
    return principal.platform_role is not None and permission in STAFF_PERMISSIONS[principal.platform_role]


# -- the warehouse (health scores, activity): a missing warehouse is a message, not an error page ----


async def health_by_org(warehouse: Path) -> dict[str, dict[str, Any]] | None:
    """Every org's health row keyed by org id, or ``None`` before the warehouse is built."""
    current = await warehouse_reads.build(warehouse)
    return None if current is None else current.health


def trend_arrow(trend: float | None) -> tuple[str, str]:
    """(symbol, words) for a WAU trend: the words are what a screen reader says."""
    if trend is None:
        return "-", "no trend yet"
    if trend > 0.05:
        return "↑", f"up {trend:.0%}"
    if trend < -0.05:
        return "↓", f"down {abs(trend):.0%}"
    return "→", "steady"


# -- Org 360 ---------------------------------------------------------------------------------------


@dataclass
class OrgPage:
    """One org's page: the org view first (its read is the audited one), then each section's data."""

    org_id: uuid.UUID
    db: AsyncSession
    engine: AsyncEngine
    warehouse: Path
    principal: Principal
    ctx: RequestContext
    split: Split  # how the audit section's verify splits a big chain (the settings')
    view: admin.OrgView | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def actor(self) -> Actor:
        return Actor.of(self.principal, as_staff=True)


Loader = Callable[[OrgPage], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Section:
    key: str
    title: str
    template: str
    load: Loader


async def _members(page: OrgPage) -> dict[str, Any]:
    assert page.view is not None
    return {
        "members": page.view.members[: admin.VIEW_MEMBERS],
        "more": len(page.view.members) > admin.VIEW_MEMBERS,
        "active": page.view.active_members,
        "invited": page.view.invited_members,
    }


async def _billing(page: OrgPage) -> dict[str, Any]:
    assert page.view is not None
    reconciliation = await latest_reconciliation(page.db)
    return {
        "billing": await billing_screen(page.db, page.org_id),
        "stripe_customer_id": page.view.org.stripe_customer_id,
        "run": reconciliation.run,
        "discrepancies": [d for d in reconciliation.discrepancies if d.organization_id == page.org_id],
    }


async def _health(page: OrgPage) -> dict[str, Any]:
    current = await warehouse_reads.build(page.warehouse)
    if current is None:
        return {
            "health": None,
            "missing": "analytics are not built yet: the build-warehouse flow has not run",
        }
    health = current.health_of(page.org_id)
    if health is None:
        return {
            "health": None,
            "missing": "no health score for this organization yet: the warehouse has not seen it",
        }
    # As GET /v1/admin/orgs/{org_id}/health records it.
    await audit.record(
        page.db, action="staff.health_viewed", actor=page.actor, ctx=page.ctx, organization_id=page.org_id,
        resource_type="organization", resource_id=page.org_id,
    )  # fmt: skip
    days = await warehouse_reads.activity(current, page.warehouse, page.org_id, CHART_DAYS)
    points = [Point(d.day, d.dau, d.wau) for d in days]
    return {
        "health": health,
        "trend": trend_arrow(health.wau_trend),
        "chart": activity_svg(points),
        "points": points,
    }


@dataclass(frozen=True, slots=True)
class FlagWhy:
    """Why a flag answers as it does for the org: the evaluation's own sentence (what the admin org
    view returns as ``explanation``), and for a rule that decided, the rule with its segments and
    the constraints that held. (Rules passed over are in the sentence, with what failed.)"""

    explanation: str
    rule: Rule | None


def flag_why(flag: FeatureFlag, result: Evaluation, segments: dict[str, list[dict[str, Any]]]) -> FlagWhy:
    rule = None
    if result.reason is Reason.rule:
        rule = next((r for r in definition(flag, segments).rules if r.name == result.rule), None)
    return FlagWhy(result.explain(), rule)


async def _flags(page: OrgPage) -> dict[str, Any]:
    states, overrides = await flags.org_flags(page.db, org_id=page.org_id)
    ruled = any(r.reason is Reason.rule for _, r in states)
    segments = await read_segments(page.db) if ruled else {}
    return {
        "states": [(f, r, flag_why(f, r, segments)) for f, r in states],
        "overrides": {key: o for o, key in overrides},
        "on": [(f, r) for f, r in states if r.enabled],
    }


async def _audit(page: OrgPage) -> dict[str, Any]:
    assert page.view is not None
    report = await verify(page.engine, chain_key=audit.chain_key_of(page.org_id), split=page.split)
    return {
        "entries": [entry_out(e) for e in page.view.recent_audit],
        "ok": report.ok,
        "checked": report.entries_checked,
        "broken": report.first_broken,
    }


async def _webhooks(page: OrgPage) -> dict[str, Any]:
    rows = await endpoints.list_endpoints(page.db, org_id=page.org_id, cursor=None, limit=ENDPOINTS_SHOWN)
    listed = [(e, await endpoints.stats(page.db, org_id=page.org_id, endpoint_id=e.id)) for e in rows]
    failing = await deliveries.failing_endpoints(page.db, org_id=page.org_id)
    failed = []
    for endpoint in failing:
        for delivery_id in endpoint.latest_failed_delivery_ids:
            delivery, message, attempts = await deliveries.delivery_detail(
                page.db, delivery_id=delivery_id, org_id=page.org_id
            )
            failed.append((endpoint, delivery, message, attempts))
    return {"endpoints": listed, "failing": failing, "failed": failed}


async def _inbound(page: OrgPage) -> dict[str, Any]:
    """Inbound Stripe events about this org: its customer's, or naming it in their metadata."""
    assert page.view is not None
    obj = InboundEvent.payload["data"]["object"]
    about = [obj["metadata"]["organization_id"].astext == str(page.org_id)]
    if page.view.org.stripe_customer_id:
        customer = page.view.org.stripe_customer_id
        about += [obj["customer"].astext == customer, obj["id"].astext == customer]
    rows = await page.db.scalars(
        select(InboundEvent).where(or_(*about)).order_by(InboundEvent.id.desc()).limit(INBOUND_SHOWN)
    )
    return {"events": list(rows.all())}


async def _streams(page: OrgPage) -> dict[str, Any]:
    """The org's audit streams with their lag, as ``GET /v1/orgs/{org_id}/audit-streams`` reads them."""
    rows = await streams.list_streams(page.db, org_id=page.org_id, cursor=None, limit=STREAMS_SHOWN)
    shown = rows[:STREAMS_SHOWN]
    lags = await streams.lags(page.db, shown)
    return {
        "streams": [(s, lags[s.id], streams.snapshot(s)["url"]) for s in shown],
        "more": len(rows) > STREAMS_SHOWN,
    }


async def _warnings(page: OrgPage) -> dict[str, Any]:
    """The org's ingestion warnings, newest first, as ``GET /v1/orgs/{org_id}/ingestion-warnings``
    reads them (the page's view is audited once, as ``staff.org_viewed``)."""
    rows = await ingestion.list_warnings(
        page.db, org_id=page.org_id, reason=None, cursor=None, limit=WARNINGS_SHOWN
    )
    return {"warnings": rows[:WARNINGS_SHOWN], "more": len(rows) > WARNINGS_SHOWN}


#: The Org 360 page, top to bottom.
SECTIONS: tuple[Section, ...] = (
    Section("members", "Members and roles", "sections/members.html", _members),
    Section("billing", "Subscription", "sections/billing.html", _billing),
    Section("health", "Health", "sections/health.html", _health),
    Section("flags", "Feature flags", "sections/flags.html", _flags),
    Section("audit", "Recent audit entries", "sections/audit.html", _audit),
    Section("webhooks", "Webhooks", "sections/webhooks.html", _webhooks),
    Section("inbound", "Inbound Stripe events", "sections/inbound.html", _inbound),
    Section("warnings", "Ingestion warnings", "sections/warnings.html", _warnings),
    Section("streams", "Audit streams", "sections/streams.html", _streams),
)


async def org_page(page: OrgPage) -> OrgPage:
    """Read the org (audited, 404 when it does not exist), then every section."""
    page.view = await admin.org_view(page.db, org_id=page.org_id, actor=page.actor, ctx=page.ctx)
    for section in SECTIONS:
        page.data[section.key] = await section.load(page)
    return page


# -- Search and health -----------------------------------------------------------------------------


async def search(db: AsyncSession, warehouse: Path, q: str | None, limit: int) -> list[dict[str, Any]]:
    rows = (await admin.search_orgs(db, q=q, cursor=None, limit=limit))[:limit]
    plans = await current_plans(db, [org.id for org, _ in rows])
    health = await health_by_org(warehouse) or {}
    return [
        {"org": org, "active_members": count, "plan": plans.get(org.id), "health": health.get(str(org.id))}
        for org, count in rows
    ]


@dataclass(frozen=True, slots=True)
class HealthPage:
    rows: list[dict[str, Any]] | None
    as_of: date | None
    reconciliation: Any
    failing: list[Any]
    names: dict[uuid.UUID, str]


async def health_page(
    db: AsyncSession, warehouse: Path, *, sort: str, at_risk: bool, actor: Actor, ctx: RequestContext
) -> HealthPage:
    """Every org's health (as the report shows it), the latest reconciliation, failing endpoints."""
    by_org = await health_by_org(warehouse)
    rows = None
    as_of = None
    if by_org is not None:
        column, descending = HEALTH_SORTS[sort]
        rows = [r for r in by_org.values() if not at_risk or r["label"] == "at_risk"]
        rows.sort(
            key=lambda r: (r[column] is None, r[column] if r[column] is not None else 0), reverse=descending
        )
        for row in rows:
            row["trend"] = trend_arrow(row.get("wau_trend"))
        current = await warehouse_reads.build(warehouse)
        as_of = current.as_of if current is not None else None
    failing = await deliveries.failing_endpoints(db, org_id=None)
    names = await admin.org_names(db, {f.organization_id for f in failing})
    # As GET /v1/admin/reports/org-health records it: every org's health was shown.
    await audit.record(
        db, action="staff.report_viewed", actor=actor, ctx=ctx, organization_id=None, resource_type="report",
        resource_id="org-health", metadata={"format": "console"},
    )  # fmt: skip
    return HealthPage(rows, as_of, await latest_reconciliation(db), failing, names)
