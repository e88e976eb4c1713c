"""Processing inbound provider events: one table of handlers, by event type.

The billing mirror plugs in here (``customer.subscription.*``, ``invoice.*``). A handler gets the
stored event and applies it in the caller's transaction (inside a savepoint: a handler that
raises leaves nothing half-applied, and the event is marked ``failed`` with the error). Stripe
does not deliver events in order, so a handler must apply an event only when it is newer than
the state it would overwrite: compare :func:`object_time` of the event with the time recorded
beside the mirrored object, never the order of arrival.

Until a handler is registered for its type, an event is stored and marked ``ignored``; staff can
reprocess it once one exists.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from api.db.base import utcnow
from api.webhooks.models import InboundEvent, InboundStatus

log = logging.getLogger("keel.webhooks.inbound")

#: A handler returns ``"ignored"`` when the event changed nothing it keeps (an older state, say).
Handler = Callable[[AsyncSession, InboundEvent], Awaitable[str | None]]

#: Event type (exact, or a prefix ending in ``.*``) -> handler (the billing mirror's, below).
HANDLERS: dict[str, Handler] = {}


def register(pattern: str) -> Callable[[Handler], Handler]:
    """``@register("invoice.*")`` adds a handler to :data:`HANDLERS`."""

    def add(handler: Handler) -> Handler:
        HANDLERS[pattern] = handler
        return handler

    return add


def handler_for(event_type: str) -> Handler | None:
    """The exact handler, else the one with the longest matching prefix."""
    if event_type in HANDLERS:
        return HANDLERS[event_type]
    best: tuple[int, Handler] | None = None
    for pattern, handler in HANDLERS.items():
        prefix_match = pattern.endswith(".*") and event_type.startswith(pattern[:-1])
        if prefix_match and (best is None or len(pattern) > best[0]):
            best = (len(pattern), handler)
    return best[1] if best else None


def object_time(event: InboundEvent) -> datetime | None:
    """When Stripe produced this state of the object: the event's own ``created`` second.

    Handlers order by this (ties broken by the object's own fields, e.g. a subscription's
    ``current_period_start``), so an older event never overwrites newer state.
    """
    created = event.payload.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        return datetime.fromtimestamp(created, UTC)
    return event.event_created_at


async def process(session: AsyncSession, event: InboundEvent) -> InboundStatus:
    """Run the event's handler once; record the outcome on the event."""
    event.attempts += 1
    handler = handler_for(event.event_type)
    if handler is None:
        event.status, event.last_error = InboundStatus.ignored, None
    else:
        try:
            async with session.begin_nested():
                outcome = await handler(session, event)
        except Exception as exc:
            log.warning("processing %s %s failed", event.event_type, event.external_id, exc_info=True)
            event.status, event.last_error = InboundStatus.failed, f"{type(exc).__name__}: {exc}"[:2000]
        else:
            done = InboundStatus.ignored if outcome == "ignored" else InboundStatus.processed
            event.status, event.last_error = done, None
    event.processed_at = utcnow()
    await session.flush()
    return event.status


@register("customer.subscription.*")
@register("invoice.*")
async def apply_to_billing_mirror(session: AsyncSession, event: InboundEvent) -> str:
    """Subscription and invoice events keep the billing mirror current (api.billing.mirror orders
    them by Stripe's own timestamps, so an older event never overwrites newer state)."""
    from api.billing.mirror import apply_stripe_event

    return await apply_stripe_event(session, event.payload)
