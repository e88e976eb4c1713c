"""The state of the local Stripe-compatible server: Stripe objects in memory, built from Stripe's
own example objects (``fixtures.json``, copied from Stripe's OpenAPI ``fixtures3.json``).

Every change made through the store's methods records the event Stripe would send
(``customer.subscription.created|updated|deleted``), with ``data.previous_attributes``, so tests
can replay real-looking event streams. Methods take ``at`` (Unix seconds) to set an event's
``created``; by default it is now.
"""

from __future__ import annotations

import copy
import json
import os
import random
import string
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES: dict[str, dict[str, Any]] = json.loads((Path(__file__).with_name("fixtures.json")).read_text())

LIVE_STATUSES = {"trialing", "active", "past_due", "unpaid", "incomplete", "paused"}


def _template(name: str) -> dict[str, Any]:
    return copy.deepcopy(TEMPLATES[name])


@dataclass
class FaultPlan:
    """Answers the server gives instead of the real one: ``count`` times (None: until cleared)."""

    status: int = 0
    error_type: str = "api_error"
    message: str = "An unknown error occurred"
    count: int | None = 0

    def take(self) -> tuple[int, str, str] | None:
        if self.status == 0 or self.count == 0:
            return None
        if self.count is not None:
            self.count -= 1
        return self.status, self.error_type, self.message


@dataclass
class StripeStore:
    """Customers, products, prices, subscriptions and events, newest first when listed."""

    seed: int = 0
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: FaultPlan = field(default_factory=FaultPlan)
    #: Requests answered (faults included), for tests that count calls.
    requests: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._order = 0
        self._ranks: dict[str, tuple[int, int]] = {}
        self.lock = threading.RLock()

    # -- persistence -----------------------------------------------------------------------------
    #: What ``save`` writes: the objects, their listing order and the id generator's state, so a
    #: loaded store lists the same objects in the same order and hands out fresh ids, never old ones.
    PERSISTED = ("customers", "products", "prices", "subscriptions", "events")

    def save(self, path: Path) -> None:
        """Write the whole state to ``path`` as JSON, atomically (a temporary file, then a rename)."""
        with self.lock:
            version, internal, gauss = self._random.getstate()
            state = {
                "seed": self.seed, "order": self._order, "ranks": self._ranks,
                "random": [version, list(internal), gauss],
                **{name: getattr(self, name) for name in self.PERSISTED},
            }  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_text(json.dumps(state))
            os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> StripeStore:
        """A store with the state ``save`` wrote."""
        state = json.loads(path.read_text())
        store = cls(seed=int(state["seed"]), **{name: state[name] for name in cls.PERSISTED})
        version, internal, gauss = state["random"]
        store._random.setstate((version, tuple(internal), gauss))
        store._order = int(state["order"])
        store._ranks = {key: (int(created), int(order)) for key, (created, order) in state["ranks"].items()}
        return store

    # -- ids and ordering ------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        alphabet = string.ascii_letters + string.digits
        return f"{prefix}_{''.join(self._random.choice(alphabet) for _ in range(14))}"

    def _rank(self, obj: dict[str, Any]) -> None:
        self._order += 1
        self._ranks[obj["id"]] = (int(obj.get("created") or 0), self._order)

    def ordered(self, objects: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Newest first, as Stripe lists: by ``created``, then by creation order."""
        return sorted(objects.values(), key=lambda o: self._ranks.get(o["id"], (0, 0)), reverse=True)

    @staticmethod
    def now() -> int:
        return int(time.time())

    # -- products and prices ---------------------------------------------------------------------
    def add_product(self, name: str, *, id: str | None = None, at: int | None = None) -> dict[str, Any]:
        with self.lock:
            product = _template("product")
            product.update(
                id=id or self.new_id("prod"), name=name, description=f"{name} plan", created=at or self.now(),
                updated=at or self.now(), default_price=None, package_dimensions=None, type="service",
            )  # fmt: skip
            self.products[product["id"]] = product
            self._rank(product)
            return product

    def add_price(
        self,
        product: str,
        *,
        unit_amount: int,
        currency: str = "usd",
        interval: str = "month",
        lookup_key: str | None = None,
        id: str | None = None,
        at: int | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            price = _template("price")
            price.update(
                id=id or self.new_id("price"), product=product, unit_amount=unit_amount,
                unit_amount_decimal=str(unit_amount), currency=currency, lookup_key=lookup_key,
                created=at or self.now(), transform_quantity=None,
            )  # fmt: skip
            price["recurring"] = {**price["recurring"], "interval": interval, "interval_count": 1}
            self.prices[price["id"]] = price
            self._rank(price)
            if self.products[product].get("default_price") is None:
                self.products[product]["default_price"] = price["id"]
            return price

    # -- customers -------------------------------------------------------------------------------
    def add_customer(
        self,
        *,
        name: str | None = None,
        email: str | None = None,
        metadata: dict[str, str] | None = None,
        id: str | None = None,
        at: int | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            customer = _template("customer")
            customer.update(
                id=id or self.new_id("cus"), name=name, email=email, metadata=dict(metadata or {}),
                created=at or self.now(), discount=None, invoice_prefix=self.new_id("x")[2:10].upper(),
            )  # fmt: skip
            self.customers[customer["id"]] = customer
            self._rank(customer)
            return customer

    # -- subscriptions ---------------------------------------------------------------------------
    def add_subscription(
        self,
        customer: str,
        price: str,
        *,
        quantity: int = 1,
        status: str = "active",
        metadata: dict[str, str] | None = None,
        trial_end: int | None = None,
        cancel_at_period_end: bool = False,
        id: str | None = None,
        at: int | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            created = at or self.now()
            sub = _template("subscription")
            sub_id = id or self.new_id("sub")
            period_end = created + 30 * 86400
            item = copy.deepcopy(sub["items"]["data"][0])
            item.update(
                id=self.new_id("si"), subscription=sub_id, quantity=quantity, created=created,
                price=copy.deepcopy(self.prices[price]), plan=self._plan_of(price),
                current_period_start=created, current_period_end=period_end,
            )  # fmt: skip
            sub.update(
                id=sub_id, customer=customer, status=status, metadata=dict(metadata or {}), created=created,
                start_date=created, billing_cycle_anchor=created, currency=self.prices[price]["currency"],
                trial_start=created if trial_end else None, trial_end=trial_end,
                cancel_at_period_end=cancel_at_period_end,
                cancel_at=period_end if cancel_at_period_end else None,
                canceled_at=created if status == "canceled" else None,
                ended_at=created if status == "canceled" else None, next_pending_invoice_item_invoice=None,
                pause_collection=None, pending_update=None, schedule=None, test_clock=None,
            )  # fmt: skip
            sub["items"] = {
                "object": "list", "data": [item], "has_more": False,
                "url": f"/v1/subscription_items?subscription={sub_id}",
            }  # fmt: skip
            self.subscriptions[sub_id] = sub
            self._rank(sub)
            self.record_event("customer.subscription.created", sub, at=created)
            return sub

    def _plan_of(self, price_id: str) -> dict[str, Any]:
        price = self.prices[price_id]
        return {
            "id": price_id, "object": "plan", "active": True, "amount": price["unit_amount"],
            "amount_decimal": str(price["unit_amount"]), "billing_scheme": "per_unit",
            "created": price["created"], "currency": price["currency"],
            "interval": price["recurring"]["interval"], "interval_count": 1, "livemode": False,
            "metadata": {}, "meter": None, "nickname": None, "product": price["product"], "tiers_mode": None,
            "transform_usage": None, "trial_period_days": None, "usage_type": "licensed",
        }  # fmt: skip

    def update_subscription(self, sub_id: str, *, at: int | None = None, **changes: Any) -> dict[str, Any]:
        """Change a subscription as Stripe would (``status``, ``quantity``, ``price``,
        ``cancel_at_period_end``, ``trial_end``, ``metadata``) and record the event."""
        with self.lock:
            sub = self.subscriptions[sub_id]
            when = at or self.now()
            previous: dict[str, Any] = {}
            item = sub["items"]["data"][0]
            for key, value in changes.items():
                if key == "quantity":
                    previous["items"] = copy.deepcopy(sub["items"])
                    item["quantity"] = value
                elif key == "price":
                    previous["items"] = copy.deepcopy(sub["items"])
                    item["price"], item["plan"] = copy.deepcopy(self.prices[value]), self._plan_of(value)
                else:
                    previous[key] = sub.get(key)
                    sub[key] = value
            if changes.get("status") == "canceled":
                sub["canceled_at"] = sub["ended_at"] = when
            # Stripe tells a cancellation apart: it sends ``customer.subscription.deleted``.
            change = "deleted" if changes.get("status") == "canceled" else "updated"
            self.record_event(f"customer.subscription.{change}", sub, at=when, previous=previous)
            return sub

    def remove_subscription(self, sub_id: str) -> None:
        """Forget a subscription without an event (as if it had never been in this account)."""
        with self.lock:
            self.subscriptions.pop(sub_id)

    def put_raw(self, kind: str, obj: dict[str, Any]) -> None:
        """Store an object exactly as given (malformed ones too), for fault tests."""
        with self.lock:
            getattr(self, kind)[obj["id"]] = obj
            self._rank(obj)

    # -- events ----------------------------------------------------------------------------------
    def record_event(
        self, kind: str, obj: dict[str, Any], *, at: int | None = None, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        with self.lock:
            event = _template("event")
            data: dict[str, Any] = {"object": copy.deepcopy(obj)}
            if previous:
                data["previous_attributes"] = previous
            event.update(
                id=self.new_id("evt"), type=kind, created=at or self.now(), data=data,
                api_version="2026-10-28.endive", pending_webhooks=1,
                request={"id": self.new_id("req"), "idempotency_key": None},
            )  # fmt: skip
            self.events[event["id"]] = event
            self._rank(event)
            return event

    def subscription_events(self) -> list[dict[str, Any]]:
        """Every subscription event, oldest first."""
        with self.lock:
            return [
                copy.deepcopy(e)
                for e in reversed(self.ordered(self.events))
                if e["type"].startswith("customer.subscription.")
            ]
