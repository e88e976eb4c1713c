"""The full sync and the reconciliation of Stripe, the mirror and product use.

Both read Stripe whole first (``stripe_api.read_stripe``), then write in one transaction: when
Stripe cannot be read, nothing is written; when the writing fails, nothing of it stays.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth.context import Actor
from api.billing import mirror
from api.billing.models import (
    BillingDiscrepancy,
    DiscrepancyKind,
    ReconciliationRun,
    ReconciliationRunStatus,
    Severity,
    Subscription,
    SubscriptionStatus,
    UsageSource,
)
from api.billing.stripe_api import StripeSnapshot
from api.db.base import new_id, utcnow
from api.members.models import Membership
from api.members.seats import ACTIVE_MEMBER
from api.orgs.models import Organization
from warehouse import rules

K = DiscrepancyKind
SEVERITY = {
    K.missing_in_mirror: Severity.high,
    K.missing_in_stripe: Severity.high,
    K.status_mismatch: Severity.high,
    K.unpaid_active_usage: Severity.high,
    K.plan_mismatch: Severity.medium,
    K.seat_count_mismatch: Severity.medium,
    K.over_seat_limit: Severity.medium,
    K.unlinked_customer: Severity.medium,
    K.stale_mirror: Severity.low,
}
#: Kinds a repair fixes by bringing the mirror in line with Stripe; the others need a person.
REPAIRABLE = {K.missing_in_mirror, K.missing_in_stripe, K.status_mismatch, K.plan_mismatch,
              K.seat_count_mismatch, K.stale_mirror}  # fmt: skip
#: A subscription in one of these, with the org still using the product, is unpaid active usage.
NOT_PAYING = {SubscriptionStatus.unpaid, *mirror.TERMINAL}
DEFAULT_STALE_AFTER = timedelta(hours=48)
SYNC_ACTOR = Actor.system("billing-sync")
REPAIR_ACTOR = Actor.system("billing-reconcile")


# -- the full sync -------------------------------------------------------------------------------


@dataclass
class SyncResult:
    customers: int = 0
    subscriptions: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    linked: int = 0
    unlinked_customers: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "customers": self.customers, "subscriptions": self.subscriptions, "created": self.created,
            "updated": self.updated, "unchanged": self.unchanged, "stale": self.stale,
            "linked": self.linked, "unlinked_customers": self.unlinked_customers, "errors": self.errors,
        }  # fmt: skip


async def sync_billing(session: AsyncSession, snapshot: StripeSnapshot) -> SyncResult:
    """Mirror every subscription Stripe has (idempotent: a second run changes nothing), linking
    customers to organizations by ``metadata.organization_id`` where no org names them yet."""
    result = SyncResult(customers=len(snapshot.customers), subscriptions=len(snapshot.subscriptions))
    customers = {c["id"]: c for c in snapshot.customers if isinstance(c.get("id"), str)}
    linked_before = await _linked_count(session)
    resolved: dict[str, uuid.UUID | None] = {}
    for customer_id, customer in sorted(customers.items()):
        resolved[customer_id] = await mirror.resolve_organization(
            session, customer_id, _meta_org(customer), actor=SYNC_ACTOR
        )
    unlinked = {cid for cid, org in resolved.items() if org is None}
    for obj in snapshot.subscriptions:
        try:
            state = mirror.parse_subscription(obj)
        except mirror.MalformedStripeObject as exc:
            result.errors.append({"object": "subscription", "id": str(obj.get("id")), "error": str(exc)})
            continue
        org_id = resolved.get(state.stripe_customer_id)
        if org_id is None:
            org_id = await mirror.resolve_organization(
                session, state.stripe_customer_id, state.metadata_organization_id, actor=SYNC_ACTOR
            )
            resolved[state.stripe_customer_id] = org_id
        if org_id is None:
            unlinked.add(state.stripe_customer_id)
            continue
        unlinked.discard(state.stripe_customer_id)
        outcome = await mirror.apply_state(
            session, state, organization_id=org_id, reported_at=snapshot.read_started_at, actor=SYNC_ACTOR
        )
        setattr(result, outcome, getattr(result, outcome) + 1)
    result.linked = await _linked_count(session) - linked_before
    result.unlinked_customers = sorted(unlinked)
    return result


#: Customers (with their subscriptions), or fixes, written per transaction. Every audited change
#: holds its organization's chain lock until commit, and Postgres's lock table is finite: a first
#: sync of 10,000 customers in one transaction runs out of it.
BATCH = 200


def _customer_of(obj: Any) -> str | None:
    customer = obj.get("customer") if isinstance(obj, dict) else None
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) else None


def batches(snapshot: StripeSnapshot, size: int = BATCH) -> list[StripeSnapshot]:
    """The snapshot cut into pieces of ``size`` customers with all their subscriptions (then the
    subscriptions of customers the customer list does not have)."""
    customers = sorted(
        (c for c in snapshot.customers if isinstance(c.get("id"), str)), key=lambda c: str(c["id"])
    )
    known = {c["id"] for c in customers}
    by_customer: dict[str, list[dict[str, Any]]] = {}
    orphans = []
    for obj in snapshot.subscriptions:
        customer = _customer_of(obj)
        if customer in known:
            by_customer.setdefault(customer, []).append(obj)  # type: ignore[arg-type]
        else:
            orphans.append(obj)
    pieces = []
    for i in range(0, len(customers), size):
        chunk = customers[i : i + size]
        subs = [obj for c in chunk for obj in by_customer.get(c["id"], [])]
        pieces.append(StripeSnapshot(snapshot.read_started_at, chunk, subs))
    for i in range(0, len(orphans), size):
        pieces.append(StripeSnapshot(snapshot.read_started_at, [], orphans[i : i + size]))
    return pieces or [StripeSnapshot(snapshot.read_started_at)]


async def sync_in_batches(sessions: Callable[[], Any], snapshot: StripeSnapshot) -> SyncResult:
    """:func:`sync_billing` over :func:`batches`, a transaction each. A run stopped half-way (the
    database failing) leaves whole batches behind, and the next run finishes the work."""
    total = SyncResult()
    for piece in batches(snapshot):
        async with sessions() as session, session.begin():
            part = await sync_billing(session, piece)
        for name in ("customers", "subscriptions", "created", "updated", "unchanged", "stale", "linked"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.unlinked_customers += part.unlinked_customers
        total.errors += part.errors
    total.unlinked_customers.sort()
    return total


async def _linked_count(session: AsyncSession) -> int:
    return int(
        await session.scalar(select(func.count()).where(Organization.stripe_customer_id.is_not(None))) or 0
    )


def _meta_org(obj: dict[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    return str(metadata.get("organization_id") or "") or None if isinstance(metadata, dict) else None


# -- reconciliation: the comparison (a pure function) --------------------------------------------


@dataclass(frozen=True)
class OrgFacts:
    id: uuid.UUID
    stripe_customer_id: str | None
    active_members: int


@dataclass(frozen=True)
class MirrorFacts:
    stripe_subscription_id: str
    organization_id: uuid.UUID
    stripe_customer_id: str
    stripe_price_id: str | None
    plan: str | None
    status: SubscriptionStatus
    seats: int
    synced_at: datetime


@dataclass
class Found:
    kind: DiscrepancyKind
    organization_id: uuid.UUID | None
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    expected: str | None
    actual: str | None
    detail: str
    repaired: bool = False

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]

    def sort_key(self) -> tuple[str, ...]:
        return (self.kind.value, str(self.organization_id or ""), self.stripe_subscription_id or "",
                self.stripe_customer_id or "")  # fmt: skip


@dataclass
class Comparison:
    found: list[Found] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    #: Stripe's subscriptions that belong to an organization, with it.
    linked: dict[str, tuple[mirror.SubscriptionState, uuid.UUID]] = field(default_factory=dict)
    #: Customers that repair links to an organization by metadata: customer id → org id.
    to_link: dict[str, uuid.UUID] = field(default_factory=dict)


def _plan(plan: str | None, price_id: str | None) -> str:
    return f"{plan} ({price_id})"


def _describe(state: mirror.SubscriptionState | MirrorFacts) -> str:
    return f"{state.status.value}, {state.seats} seats, plan {state.plan or '?'}"


def compare(
    snapshot: StripeSnapshot,
    orgs: dict[uuid.UUID, OrgFacts],
    rows: list[MirrorFacts],
    usage: dict[uuid.UUID, int],
    *,
    now: datetime,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> Comparison:
    """Every discrepancy between Stripe, the mirror and product use, each found once, in a fixed order."""
    out = Comparison()
    by_customer = {o.stripe_customer_id: o.id for o in orgs.values() if o.stripe_customer_id}
    free_orgs = {o.id for o in orgs.values() if not o.stripe_customer_id}
    customers: dict[str, dict[str, Any]] = {
        c["id"]: c for c in snapshot.customers if isinstance(c.get("id"), str)
    }
    unlinked: dict[str, str] = {}

    def resolve(customer_id: str, *candidates: str | None) -> uuid.UUID | None:
        if customer_id in by_customer:
            return by_customer[customer_id]
        if customer_id in out.to_link:
            return out.to_link[customer_id]
        for candidate in candidates:
            wanted = mirror._uuid(candidate)
            if wanted in free_orgs and wanted not in out.to_link.values():
                out.to_link[customer_id] = wanted
                return wanted
        return None

    for customer_id, customer in sorted(customers.items()):
        if resolve(customer_id, _meta_org(customer)) is None:
            unlinked[customer_id] = (
                "no organization has this customer id, and metadata.organization_id names none"
            )
    states: list[mirror.SubscriptionState] = []
    for obj in snapshot.subscriptions:
        try:
            states.append(mirror.parse_subscription(obj))
        except mirror.MalformedStripeObject as exc:
            out.errors.append({"object": "subscription", "id": str(obj.get("id")), "error": str(exc)})
    for state in states:
        meta = _meta_org(customers.get(state.stripe_customer_id) or {})
        org_id = resolve(state.stripe_customer_id, meta, state.metadata_organization_id)
        if org_id is None:
            if state.stripe_customer_id not in customers:
                unlinked[state.stripe_customer_id] = (
                    f"subscription {state.stripe_subscription_id} names a customer Stripe's customer list"
                    " does not have, and no organization"
                )
            continue
        unlinked.pop(state.stripe_customer_id, None)
        out.linked[state.stripe_subscription_id] = (state, org_id)
    for customer_id, why in sorted(unlinked.items()):
        out.found.append(Found(K.unlinked_customer, None, customer_id, None, "an organization", "none", why))

    held = {r.stripe_subscription_id: r for r in rows}
    for sub_id, (state, org_id) in sorted(out.linked.items()):
        row = held.get(sub_id)
        if row is None:
            out.found.append(Found(
                K.missing_in_mirror, org_id, state.stripe_customer_id, sub_id, _describe(state), "absent",
                "Stripe has this subscription; the mirror does not",
            ))  # fmt: skip
            continue
        pairs = [
            (K.status_mismatch, state.status.value, row.status.value, "status"),
            (K.plan_mismatch, _plan(state.plan, state.stripe_price_id), _plan(row.plan, row.stripe_price_id),
             "plan"),
            (K.seat_count_mismatch, str(state.seats), str(row.seats), "seats"),
        ]  # fmt: skip
        for kind, expected, actual, what in pairs:
            if expected != actual:
                out.found.append(Found(
                    kind, org_id, state.stripe_customer_id, sub_id, expected, actual,
                    f"the mirror's {what} differs from Stripe's",
                ))  # fmt: skip
        if now - row.synced_at > stale_after:
            out.found.append(Found(
                K.stale_mirror, org_id, state.stripe_customer_id, sub_id,
                f"confirmed within {stale_after.total_seconds() / 3600:.0f} h", row.synced_at.isoformat(),
                "the mirror has not been confirmed against Stripe for too long",
            ))  # fmt: skip
    for sub_id, row in sorted(held.items()):
        if sub_id not in out.linked:
            out.found.append(Found(
                K.missing_in_stripe, row.organization_id, row.stripe_customer_id, sub_id, "absent",
                _describe(row), "the mirror holds a subscription Stripe does not have (or not for this org)",
            ))  # fmt: skip

    per_org: dict[uuid.UUID, list[mirror.SubscriptionState]] = {}
    for state, org_id in out.linked.values():
        per_org.setdefault(org_id, []).append(state)
    for org_id, subs in sorted(per_org.items()):
        current = rules.current_subscription(subs)
        facts = orgs.get(org_id)
        members = facts.active_members if facts else 0
        if rules.over_seat_limit(current.status, members, current.seats):
            out.found.append(Found(
                K.over_seat_limit, org_id, current.stripe_customer_id, current.stripe_subscription_id,
                f"at most {current.seats} active members", f"{members} active members",
                "more active members than seats bought",
            ))  # fmt: skip
        users = usage.get(org_id, 0)
        if current.status in NOT_PAYING and users > 0:
            out.found.append(Found(
                K.unpaid_active_usage, org_id, current.stripe_customer_id, current.stripe_subscription_id,
                f"no use while {current.status.value}", f"{users} monthly active users",
                "the organization uses the product without a paid subscription",
            ))  # fmt: skip
    out.found.sort(key=Found.sort_key)
    return out


# -- reconciliation: reading Keel's side, recording, repairing -----------------------------------


def _warehouse_mau(path: Path) -> Any:
    from warehouse import queries

    try:
        return queries.monthly_active_users(path)
    except queries.WarehouseMissing:
        return None


#: Monthly active users per organization from Postgres's events, by the rules the org_active_users
#: mart applies (warehouse.rules): identified users, over the 30 UTC days ending today.
POSTGRES_MAU = (
    "SELECT e.organization_id, count(DISTINCT {user}) FROM events e"
    " LEFT JOIN identity_aliases a ON a.organization_id = e.organization_id"
    " AND a.previous_id = coalesce(e.user_id, e.anonymous_id)"
    " WHERE {user} IS NOT NULL AND {window} GROUP BY e.organization_id"
).format(
    user=rules.ACTIVE_USER.sql("e.user_id", "e.anonymous_id", "a.user_id"),
    window=rules.IN_MAU_WINDOW.sql(
        "CAST(timezone('UTC', e.\"timestamp\") AS date)", "CAST(timezone('UTC', now()) AS date)"
    ),
)


async def usage_by_org(
    session: AsyncSession, warehouse_path: Path | None
) -> tuple[dict[uuid.UUID, int], str]:
    """Monthly active users per organization: from the warehouse (``org_active_users`` at its
    as-of date) when one is built; otherwise from Postgres's events of the last 30 days."""
    if warehouse_path is not None:
        frame = await asyncio.to_thread(_warehouse_mau, Path(warehouse_path))
        if frame is not None:
            return {
                uuid.UUID(r["organization_id"]): int(r["mau"]) for r in frame.iter_rows(named=True)
            }, UsageSource.warehouse
    rows = await session.execute(text(POSTGRES_MAU))
    return {org: int(n) for org, n in rows.all()}, UsageSource.postgres


async def keel_side(session: AsyncSession) -> tuple[dict[uuid.UUID, OrgFacts], list[MirrorFacts]]:
    members = (
        select(func.count())
        .where(Membership.organization_id == Organization.id, ACTIVE_MEMBER)
        .correlate(Organization)
        .scalar_subquery()
    )
    orgs = {
        org_id: OrgFacts(org_id, customer, int(n))
        for org_id, customer, n in (
            await session.execute(select(Organization.id, Organization.stripe_customer_id, members))
        ).all()
    }
    rows = [
        MirrorFacts(
            r.stripe_subscription_id,
            r.organization_id,
            r.stripe_customer_id,
            r.stripe_price_id,
            r.plan,
            r.status,
            r.seats,
            r.synced_at,
        )
        for r in (await session.scalars(select(Subscription))).all()
    ]
    return orgs, rows


@dataclass
class RunResult:
    run_id: uuid.UUID
    found: list[Found]
    errors: list[dict[str, str]]
    usage_source: str
    repaired: int
    compare_seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.found:
            counts[f.kind.value] = counts.get(f.kind.value, 0) + 1
        return dict(sorted(counts.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id), "discrepancies": len(self.found), "by_kind": self.counts(),
            "repaired": self.repaired, "errors": self.errors, "usage_source": self.usage_source,
        }  # fmt: skip


async def reconcile(
    sessions: Callable[[], Any],
    snapshot: StripeSnapshot,
    *,
    repair: bool = False,
    warehouse_path: Path | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    clock: Callable[[], datetime] = utcnow,
) -> RunResult:
    """Compare; repair if asked (in batches, each fix audited as the system actor); then record the
    run and its discrepancies in one transaction. A repair stopped half-way by a database failure
    leaves whole batches of fixes and no run: the next run finds what is left."""
    import time

    started = clock()
    tick = time.perf_counter()
    async with sessions() as session, session.begin():
        orgs, rows = await keel_side(session)
        usage, source = await usage_by_org(session, warehouse_path)
    result = compare(snapshot, orgs, rows, usage, now=started, stale_after=stale_after)
    compare_seconds = time.perf_counter() - tick
    repaired = await _repair(sessions, result, snapshot) if repair else 0
    run = ReconciliationRun(
        id=new_id(), started_at=started, finished_at=clock(), status=ReconciliationRunStatus.completed,
        repair=repair, usage_source=source, stripe_customers=len(snapshot.customers),
        stripe_subscriptions=len(snapshot.subscriptions), mirror_subscriptions=len(rows),
        discrepancy_count=len(result.found), repaired_count=repaired, errors=result.errors,
    )  # fmt: skip
    async with sessions() as session, session.begin():
        session.add(run)
        await session.flush()
        if result.found:
            await session.execute(
                insert(BillingDiscrepancy),
                [
                    {
                        "id": new_id(),
                        "run_id": run.id,
                        "detected_at": started,
                        "kind": f.kind,
                        "severity": f.severity,
                        "organization_id": f.organization_id,
                        "stripe_customer_id": f.stripe_customer_id,
                        "stripe_subscription_id": f.stripe_subscription_id,
                        "expected": f.expected,
                        "actual": f.actual,
                        "detail": f.detail,
                        "repaired": f.repaired,
                    }
                    for f in result.found
                ],
            )
    return RunResult(run.id, result.found, result.errors, source, repaired, compare_seconds)


async def _repair(sessions: Callable[[], Any], result: Comparison, snapshot: StripeSnapshot) -> int:
    links = sorted(result.to_link.items(), key=lambda kv: kv[0])
    for i in range(0, len(links), BATCH):
        async with sessions() as session, session.begin():
            for customer_id, org_id in links[i : i + BATCH]:
                org = await session.get(Organization, org_id, with_for_update=True)
                if org is not None and org.stripe_customer_id is None:
                    await mirror.link_customer(session, org, customer_id, actor=REPAIR_ACTOR)
    fixes: dict[str, list[Found]] = {}
    for found in result.found:
        if found.kind in REPAIRABLE and found.stripe_subscription_id is not None:
            fixes.setdefault(found.stripe_subscription_id, []).append(found)
    sub_ids = sorted(fixes)
    for i in range(0, len(sub_ids), BATCH):
        async with sessions() as session, session.begin():
            for sub_id in sub_ids[i : i + BATCH]:
                await _fix(session, sub_id, fixes[sub_id][0].kind, result, snapshot)
        for sub_id in sub_ids[i : i + BATCH]:
            for found in fixes[sub_id]:
                found.repaired = True
    return sum(len(f) for f in fixes.values())


async def _fix(
    session: AsyncSession, sub_id: str, kind: DiscrepancyKind, result: Comparison, snapshot: StripeSnapshot
) -> None:
    if kind is K.missing_in_stripe:
        row = await session.scalar(
            select(Subscription).where(Subscription.stripe_subscription_id == sub_id).with_for_update()
        )
        if row is not None:
            await mirror.remove_subscription(
                session, row, actor=REPAIR_ACTOR, reason="not in Stripe (reconciliation repair)"
            )
        return
    state, org_id = result.linked[sub_id]
    await mirror.apply_state(
        session, state, organization_id=org_id, reported_at=snapshot.read_started_at, actor=REPAIR_ACTOR,
        force=True,
    )  # fmt: skip


async def record_failure(
    session: AsyncSession, *, repair: bool, error: str, clock: Callable[[], datetime] = utcnow
) -> None:
    """A run that could not read Stripe: kept so the admin view can say so (nothing else was written)."""
    now = clock()
    session.add(
        ReconciliationRun(
            id=new_id(), started_at=now, finished_at=now, status=ReconciliationRunStatus.failed,
            repair=repair,
            usage_source=UsageSource.none, errors=[{"object": "stripe", "id": "", "error": error}],
            stripe_customers=0, stripe_subscriptions=0, mirror_subscriptions=0, discrepancy_count=0,
            repaired_count=0,
        )
    )  # fmt: skip
    await session.flush()


async def latest_runs(
    session: AsyncSession,
) -> tuple[ReconciliationRun | None, list[BillingDiscrepancy], ReconciliationRun | None]:
    """The latest completed run with its discrepancies, and a failed run newer than it, if any."""
    run = await session.scalar(
        select(ReconciliationRun)
        .where(ReconciliationRun.status == ReconciliationRunStatus.completed)
        .order_by(ReconciliationRun.started_at.desc(), ReconciliationRun.id.desc())
        .limit(1)
    )
    failure_query = select(ReconciliationRun).where(
        ReconciliationRun.status == ReconciliationRunStatus.failed
    )
    if run is not None:
        failure_query = failure_query.where(ReconciliationRun.started_at > run.started_at)
    failure = await session.scalar(failure_query.order_by(ReconciliationRun.started_at.desc()).limit(1))
    if run is None:
        return None, [], failure
    found = list(
        (
            await session.scalars(
                select(BillingDiscrepancy)
                .where(BillingDiscrepancy.run_id == run.id)
                .order_by(BillingDiscrepancy.export_seq)
            )
        ).all()
    )
    return run, found, failure
