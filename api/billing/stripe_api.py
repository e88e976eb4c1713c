"""Reading Stripe through the official SDK: one client per run, every list read whole with the
SDK's auto-pagination before anything is written, Stripe's failures turned into one clear error."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from api.settings import Settings

if TYPE_CHECKING:  # the SDK (~30 MB) loads on first use, not in every API process
    import stripe

PAGE_SIZE = 100
SUBSCRIPTION_EXPAND = ["data.items.data.price.product"]


class StripeUnavailable(RuntimeError):
    """Stripe could not be read (unreachable, refused the key, or answered an error)."""


class StripeNotConfigured(StripeUnavailable):
    """No ``KEEL_STRIPE_API_KEY``."""


def make_client(settings: Settings, *, max_network_retries: int = 2) -> stripe.StripeClient:
    """The SDK client for ``settings``: ``KEEL_STRIPE_API_BASE`` names a Stripe-compatible server."""
    if not settings.stripe_api_key:
        raise StripeNotConfigured("KEEL_STRIPE_API_KEY is not set: Keel cannot read Stripe")
    import stripe

    bases: Any = {"api": settings.stripe_api_base.rstrip("/")} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_api_key, base_addresses=bases, max_network_retries=max_network_retries
    )


def describe_error(exc: stripe.StripeError) -> str:
    """One line a person can act on."""
    import stripe

    if isinstance(exc, stripe.APIConnectionError):
        return f"Stripe is unreachable: {exc.user_message or exc}".strip()
    if isinstance(exc, stripe.AuthenticationError):
        return f"Stripe refused the API key (HTTP {exc.http_status}): {exc.user_message}"
    status = f"HTTP {exc.http_status}" if exc.http_status else "no HTTP status"
    return f"Stripe answered an error ({status}, {type(exc).__name__}): {exc.user_message or exc}"


@dataclass
class StripeSnapshot:
    """Everything one run read from Stripe, and how long the reading took."""

    read_started_at: datetime
    customers: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0


def _plain(obj: Any) -> dict[str, Any]:
    """A StripeObject as plain dicts and lists (what events carry, and what the mirror parses)."""
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def read_stripe(
    client: stripe.StripeClient, *, progress: Callable[[str, int], None] | None = None
) -> StripeSnapshot:
    """Every customer and every subscription (``status=all``, prices and products expanded)."""
    import stripe

    started = time.perf_counter()
    # Whole seconds, as Stripe's own timestamps: what this read shows is Stripe's state at least
    # as of this second (see api.billing.mirror for the ordering rule).
    snapshot = StripeSnapshot(read_started_at=datetime.fromtimestamp(int(time.time()), UTC))
    try:
        customers = client.v1.customers.list(params={"limit": PAGE_SIZE})
        for customer in customers.auto_paging_iter():
            snapshot.customers.append(_plain(customer))
            if progress and len(snapshot.customers) % PAGE_SIZE == 0:
                progress("customers", len(snapshot.customers))
        subscriptions = client.v1.subscriptions.list(
            params={"limit": PAGE_SIZE, "status": "all", "expand": SUBSCRIPTION_EXPAND}
        )
        for subscription in subscriptions.auto_paging_iter():
            snapshot.subscriptions.append(_plain(subscription))
            if progress and len(snapshot.subscriptions) % PAGE_SIZE == 0:
                progress("subscriptions", len(snapshot.subscriptions))
    except stripe.StripeError as exc:
        raise StripeUnavailable(describe_error(exc)) from exc
    snapshot.seconds = time.perf_counter() - started
    return snapshot
