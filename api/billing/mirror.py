"""The billing mirror: Stripe subscription objects turned into ``subscriptions`` rows, in order.

**The ordering rule.** Stripe's subscription object carries no "updated at", so every state the
mirror takes is stamped with when Stripe reported it (``stripe_state_at``):
- an inbound event: the event's ``created`` (Stripe's clock, whole seconds);
- a full sync or a repair: the second the read of Stripe's lists began (a list shows Stripe's
  state at least as of then).
A state is applied only when it is newer than the one held (``stripe_state_at`` greater). Within
the same second Stripe's own order is unknown: the later report wins, except that a held
``canceled`` or ``incomplete_expired`` subscription is never revived by a same-second report
(Stripe never revives one). So an event that arrives late never overwrites newer state, and any
order of delivery ends with Stripe's newest state. A repair applies the live read regardless.

Every change is audited in the same transaction (actor ``system`` for syncs and repairs,
``stripe`` for events); a report that changes nothing only moves ``synced_at``.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import services as audit
from api.audit.models import ActorType
from api.auth.context import Actor
from api.billing.models import Subscription, SubscriptionStatus
from api.db.base import utcnow
from api.orgs.live import is_live
from api.orgs.models import Organization
from warehouse import rules

#: Ended statuses (Stripe never revives one): warehouse.rules.SUBSCRIPTION_ENDED.
TERMINAL = frozenset(SubscriptionStatus(s) for s in rules.SUBSCRIPTION_ENDED)
#: The columns a Stripe report sets (and the audit entries compare).
STATE_FIELDS = (
    "organization_id", "stripe_customer_id", "stripe_price_id", "stripe_product_id", "plan", "status",
    "seats", "unit_amount", "currency", "interval", "current_period_start", "current_period_end",
    "trial_end", "cancel_at_period_end", "canceled_at",
)  # fmt: skip


class MalformedStripeObject(ValueError):
    """A Stripe object Keel cannot read; the message names the object and what is wrong."""


@dataclass(frozen=True)
class SubscriptionState:
    """What the mirror holds of one Stripe subscription."""

    stripe_subscription_id: str
    stripe_customer_id: str
    stripe_price_id: str | None
    stripe_product_id: str | None
    plan: str | None
    status: SubscriptionStatus
    seats: int
    unit_amount: int | None
    currency: str | None
    interval: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    #: ``metadata.organization_id`` of the subscription, if any.
    metadata_organization_id: str | None
    created: int

    def columns(self) -> dict[str, Any]:
        values = asdict(self)
        for extra in ("stripe_subscription_id", "metadata_organization_id", "created"):
            values.pop(extra)
        return values


def _time(value: Any, name: str, object_id: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedStripeObject(f"subscription {object_id}: {name} must be a Unix time, not {value!r}")
    return datetime.fromtimestamp(value, UTC)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id_of(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def parse_subscription(obj: Any) -> SubscriptionState:
    """Read a Stripe subscription object (a dict, as the API or an event carries it)."""
    if not isinstance(obj, dict):
        raise MalformedStripeObject(f"a subscription must be an object, not {type(obj).__name__}")
    sub_id = obj.get("id")
    if not isinstance(sub_id, str) or not sub_id:
        raise MalformedStripeObject("a subscription without an id")
    customer = _id_of(obj.get("customer"))
    if customer is None:
        raise MalformedStripeObject(f"subscription {sub_id}: no customer")
    try:
        status = SubscriptionStatus(str(obj.get("status")))
    except ValueError:
        raise MalformedStripeObject(f"subscription {sub_id}: unknown status {obj.get('status')!r}") from None
    items = _dict(obj.get("items")).get("data")
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise MalformedStripeObject(f"subscription {sub_id}: no items")
    # One licensed price per subscription is how Keel sells seats: the first item is the plan.
    item: dict[str, Any] = items[0]
    quantity = item.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise MalformedStripeObject(
            f"subscription {sub_id}: quantity must be a whole number, not {quantity!r}"
        )
    price = _dict(item.get("price"))
    product = price.get("product")
    product_name = product.get("name") if isinstance(product, dict) else None
    unit_amount = price.get("unit_amount")
    if unit_amount is not None and (isinstance(unit_amount, bool) or not isinstance(unit_amount, int)):
        raise MalformedStripeObject(f"subscription {sub_id}: unit_amount must be an integer")
    recurring = _dict(price.get("recurring"))
    metadata = _dict(obj.get("metadata"))
    # Since API version 2025-03-31 the billing period lives on the item; older objects carry it on top.
    period_start = item.get("current_period_start", obj.get("current_period_start"))
    period_end = item.get("current_period_end", obj.get("current_period_end"))
    created = obj.get("created")
    return SubscriptionState(
        stripe_subscription_id=sub_id,
        stripe_customer_id=customer,
        stripe_price_id=_id_of(price),
        stripe_product_id=_id_of(product),
        plan=price.get("lookup_key") or product_name,
        status=status,
        seats=quantity,
        unit_amount=unit_amount,
        currency=price.get("currency") or obj.get("currency"),
        interval=recurring.get("interval"),
        current_period_start=_time(period_start, "current_period_start", sub_id),
        current_period_end=_time(period_end, "current_period_end", sub_id),
        trial_end=_time(obj.get("trial_end"), "trial_end", sub_id),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        canceled_at=_time(obj.get("canceled_at"), "canceled_at", sub_id),
        metadata_organization_id=str(metadata.get("organization_id") or "") or None,
        created=created if isinstance(created, int) and not isinstance(created, bool) else 0,
    )


def is_newer(
    incoming_at: datetime, incoming: SubscriptionStatus, held_at: datetime, held: SubscriptionStatus
) -> bool:
    """The ordering rule (module docstring)."""
    if incoming_at != held_at:
        return incoming_at > held_at
    return held not in TERMINAL or incoming in TERMINAL


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID | SubscriptionStatus):
            value = str(value)
        out[key] = value
    return out


def row_state(row: Subscription) -> dict[str, Any]:
    return {name: getattr(row, name) for name in STATE_FIELDS}


async def apply_state(
    session: AsyncSession,
    state: SubscriptionState,
    *,
    organization_id: uuid.UUID,
    reported_at: datetime,
    actor: Actor,
    event_id: str | None = None,
    force: bool = False,
) -> str:
    """Bring one mirror row to ``state`` if it is newer (or ``force``); returns created, updated,
    unchanged or stale. Writers of one subscription queue on a transaction-scoped lock."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(state.stripe_subscription_id, 7)))
    )
    row = await session.scalar(
        select(Subscription)
        .where(Subscription.stripe_subscription_id == state.stripe_subscription_id)
        .with_for_update()
    )
    now = utcnow()
    incoming = {**state.columns(), "organization_id": organization_id}
    if row is None:
        session.add(
            Subscription(
                **incoming, stripe_subscription_id=state.stripe_subscription_id,
                stripe_state_at=reported_at, stripe_event_id=event_id, synced_at=now,
            )
        )  # fmt: skip
        await session.flush()
        await audit.record(
            session, action="billing.subscription_created", actor=actor, ctx=None,
            organization_id=organization_id, resource_type="subscription",
            resource_id=state.stripe_subscription_id, after=_jsonable(incoming),
            metadata={"stripe_event_id": event_id} if event_id else None,
        )  # fmt: skip
        return "created"
    if not force and not is_newer(reported_at, state.status, row.stripe_state_at, row.status):
        return "stale"
    if incoming["plan"] is None and incoming["stripe_product_id"] == row.stripe_product_id:
        incoming["plan"] = row.plan  # an event carries the product's id, not its name: keep the name
    held = row_state(row)
    changed = {k for k, v in incoming.items() if held[k] != v}
    for key in changed:
        setattr(row, key, incoming[key])
    row.stripe_state_at = max(reported_at, row.stripe_state_at) if force else reported_at
    row.synced_at = now
    if changed:
        row.stripe_event_id = event_id
    await session.flush()
    if not changed:
        return "unchanged"
    await audit.record(
        session, action="billing.subscription_updated", actor=actor, ctx=None,
        organization_id=organization_id, resource_type="subscription",
        resource_id=state.stripe_subscription_id,
        before=_jsonable({k: held[k] for k in sorted(changed)}),
        after=_jsonable({k: incoming[k] for k in sorted(changed)}),
        metadata={"stripe_event_id": event_id} if event_id else None,
    )  # fmt: skip
    if row.organization_id != held["organization_id"] and held["organization_id"] is not None:
        await audit.record(
            session, action="billing.subscription_moved", actor=actor, ctx=None,
            organization_id=held["organization_id"], resource_type="subscription",
            resource_id=state.stripe_subscription_id,
            after={"organization_id": str(organization_id)},
        )  # fmt: skip
    return "updated"


async def remove_subscription(session: AsyncSession, row: Subscription, *, actor: Actor, reason: str) -> None:
    """Drop a mirror row Stripe does not have (a reconciliation repair), audited with what it held."""
    before = _jsonable({**row_state(row), "stripe_subscription_id": row.stripe_subscription_id})
    await session.execute(delete(Subscription).where(Subscription.id == row.id))
    await audit.record(
        session, action="billing.subscription_removed", actor=actor, ctx=None,
        organization_id=row.organization_id, resource_type="subscription",
        resource_id=row.stripe_subscription_id, before=before, metadata={"reason": reason},
    )  # fmt: skip


def _uuid(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def resolve_organization(
    session: AsyncSession, customer_id: str, *candidates: str | None, actor: Actor
) -> uuid.UUID | None:
    """The organization a Stripe customer belongs to: the one whose ``stripe_customer_id`` it is;
    else the first ``metadata.organization_id`` candidate naming a live org with no customer yet,
    which is then linked (audited). None when neither works."""
    org_id = await session.scalar(
        select(Organization.id).where(Organization.stripe_customer_id == customer_id)
    )
    if org_id is not None:
        return org_id
    for candidate in candidates:
        wanted = _uuid(candidate)
        if wanted is None:
            continue
        org = await session.get(Organization, wanted, with_for_update=True)
        if not is_live(org) or org.stripe_customer_id is not None:
            continue
        await link_customer(session, org, customer_id, actor=actor)
        return org.id
    return None


async def link_customer(session: AsyncSession, org: Organization, customer_id: str, *, actor: Actor) -> None:
    org.stripe_customer_id = customer_id
    await session.flush()
    await audit.record(
        session, action="billing.customer_linked", actor=actor, ctx=None, organization_id=org.id,
        resource_type="organization", resource_id=org.id, after={"stripe_customer_id": customer_id},
        metadata={"by": "metadata.organization_id"},
    )  # fmt: skip


# -- inbound events ------------------------------------------------------------------------------


async def apply_stripe_event(session: AsyncSession, event: dict[str, Any]) -> str:
    """Apply one verified Stripe event in the caller's transaction: ``processed`` or ``ignored``.

    ``customer.subscription.*`` events bring the mirror to the object they carry when it is newer
    than the state held (the ordering rule); an older event, a customer no organization can be
    linked to, or an event type Keel does not use is ``ignored``. ``invoice.*`` events of a
    mirrored subscription are recorded in the organization's audit log (status changes arrive as
    the subscription events Stripe sends with them). A malformed object raises
    :class:`MalformedStripeObject`, so the receiver keeps the event as failed and reprocessable.
    """
    event_type = str(event.get("type") or "")
    event_id = str(event.get("id") or "")
    created = event.get("created")
    obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
    if isinstance(created, bool) or not isinstance(created, int):
        raise MalformedStripeObject(f"event {event_id or '?'}: created must be a Unix time")
    actor = Actor(ActorType.stripe, event_id or None, "stripe")
    if event_type.startswith("customer.subscription."):
        state = parse_subscription(obj)
        org_id = await resolve_organization(
            session, state.stripe_customer_id, state.metadata_organization_id, actor=actor
        )
        if org_id is None:
            return "ignored"
        outcome = await apply_state(
            session, state, organization_id=org_id, reported_at=datetime.fromtimestamp(created, UTC),
            actor=actor, event_id=event_id or None,
        )  # fmt: skip
        return "ignored" if outcome == "stale" else "processed"
    if event_type.startswith("invoice.") and isinstance(obj, dict):
        return await _apply_invoice(session, event_type, event_id, obj, actor)
    return "ignored"


async def _apply_invoice(
    session: AsyncSession, event_type: str, event_id: str, invoice: dict[str, Any], actor: Actor
) -> str:
    details = _dict(_dict(invoice.get("parent")).get("subscription_details"))
    sub_id = _id_of(details.get("subscription")) or _id_of(invoice.get("subscription"))
    if sub_id is None:
        return "ignored"
    row = await session.scalar(select(Subscription).where(Subscription.stripe_subscription_id == sub_id))
    if row is None:
        return "ignored"
    await audit.record(
        session, action="billing.invoice_event", actor=actor, ctx=None, organization_id=row.organization_id,
        resource_type="invoice", resource_id=str(invoice.get("id") or ""),
        metadata={
            "stripe_event_id": event_id, "type": event_type, "subscription": sub_id,
            "status": invoice.get("status"),
            "amount_due": invoice.get("amount_due"), "amount_paid": invoice.get("amount_paid"),
            "currency": invoice.get("currency"),
        },
    )  # fmt: skip
    return "processed"
