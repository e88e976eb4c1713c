"""A Stripe-compatible server for tests, benchmarks and the demo (see ``server``)."""

from api.stripe_local.server import DEFAULT_API_KEY, LocalStripe, StripeApp
from api.stripe_local.store import StripeStore

__all__ = ["DEFAULT_API_KEY", "LocalStripe", "StripeApp", "StripeStore"]
