"""A Stripe-compatible HTTP server (a plain ASGI app served by uvicorn) for tests, benchmarks and
the demo. The official ``stripe`` SDK talks to it through its ``api_base``; it is not a patched SDK.

It serves what Keel uses, in Stripe's wire format:
``GET /v1/customers[/{id}]``, ``/v1/subscriptions[/{id}]`` (``status``, ``customer``, ``price``
filters; ``expand`` of ``data.items.data.price.product`` and ``data.customer``),
``/v1/products[/{id}]``, ``/v1/prices[/{id}]``, ``/v1/events[/{id}]`` (``type`` filter, with
``*`` wildcards). Lists are ``{"object": "list", "data", "has_more", "url"}``, newest first, with
``limit`` (1-100, default 10), ``starting_after`` and ``ending_before`` cursors. Errors are
``{"error": {"type", "code", "message", "param"}}`` with Stripe's status codes: 401 without a
valid secret key, 404 ``resource_missing``, 400 ``parameter_invalid_integer`` /
``parameter_unknown``. ``StripeStore.faults`` makes it answer errors on purpose.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

from api.stripe_local.store import StripeStore

Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

DEFAULT_API_KEY = "sk_test_keel_local"
STRIPE_VERSION = "2026-10-28.endive"
LIST_PARAMS = {"limit", "starting_after", "ending_before", "expand", "created"}
RESOURCES = {
    # path segment: (store attribute, object name, extra list filters)
    "customers": ("customers", "customer", {"email"}),
    "subscriptions": ("subscriptions", "subscription", {"status", "customer", "price"}),
    "products": ("products", "product", {"active"}),
    "prices": ("prices", "price", {"active", "product", "lookup_keys"}),
    "events": ("events", "event", {"type", "types"}),
}
EXPANDABLE = {"items.data.price.product", "customer", "latest_invoice"}
PATH = re.compile(r"^/v1/(?P<resource>[a-z_]+)(?:/(?P<id>[^/]+))?/?$")


class StripeError(Exception):
    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
        param: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


class StripeApp:
    """The ASGI application over one :class:`StripeStore`."""

    def __init__(self, store: StripeStore, api_keys: set[str] | None = None) -> None:
        self.store = store
        self.api_keys = api_keys or {DEFAULT_API_KEY}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:  # drain the body: reads here take none, but a client may send one
            message = await receive()
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        try:
            status, body = self.handle(
                scope["method"], scope["path"], scope.get("query_string", b""), headers
            )
        except StripeError as exc:
            status, body = exc.status, exc.body()
        payload = json.dumps(body).encode()
        await send({
            "type": "http.response.start", "status": status,
            "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                (b"request-id", f"req_{uuid.uuid4().hex[:14]}".encode()),
                (b"stripe-version", STRIPE_VERSION.encode()),
            ],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    # -- the request -----------------------------------------------------------------------------
    def handle(
        self, method: str, path: str, query: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        with self.store.lock:
            self.store.requests += 1
            self.authenticate(headers.get("authorization"))
            fault = self.store.faults.take()
        if fault:
            status, kind, message = fault
            raise StripeError(status, message, type=kind)
        match = PATH.match(path)
        if method != "GET" or not match or match["resource"] not in RESOURCES:
            raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")
        params = self.params(query)
        attribute, name, filters = RESOURCES[match["resource"]]
        with self.store.lock:
            objects: dict[str, dict[str, Any]] = getattr(self.store, attribute)
            if match["id"]:
                unknown = set(params) - {"expand"}
                if unknown:
                    self.unknown_parameter(sorted(unknown)[0])
                obj = objects.get(match["id"])
                if obj is None:
                    raise StripeError(
                        404, f"No such {name}: '{match['id']}'", code="resource_missing", param="id"
                    )
                return 200, self.expand(copy.deepcopy(obj), params.get("expand", []), prefix="")
            return 200, self.list_objects(match["resource"], objects, params, filters, path)

    def authenticate(self, header: str | None) -> None:
        if not header:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization"
                " header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        scheme, _, value = header.partition(" ")
        key = value.strip()
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(key).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if key not in self.api_keys:
            shown = f"{key[:8]}{'*' * 4}{key[-4:]}" if len(key) > 12 else "****"
            raise StripeError(401, f"Invalid API Key provided: {shown}")

    @staticmethod
    def params(query: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, value in parse_qsl(query.decode(errors="replace"), keep_blank_values=True):
            base = key.split("[", 1)[0]
            if base in {"expand", "lookup_keys", "types"}:
                params.setdefault(base, []).append(value)
            elif "[" in key:
                params.setdefault(base, {})[key[len(base) :]] = value
            else:
                params[base] = value
        return params

    @staticmethod
    def unknown_parameter(name: str) -> None:
        raise StripeError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)

    def list_objects(
        self,
        resource: str,
        objects: dict[str, dict[str, Any]],
        params: dict[str, Any],
        filters: set[str],
        url: str,
    ) -> dict[str, Any]:
        unknown = set(params) - LIST_PARAMS - filters
        if unknown:
            self.unknown_parameter(sorted(unknown)[0])
        raw_limit = params.get("limit", "10")
        try:
            limit = int(raw_limit)
        except (TypeError, ValueError):
            raise StripeError(
                400, f"Invalid integer: {raw_limit}", code="parameter_invalid_integer", param="limit"
            ) from None
        if not 1 <= limit <= 100:
            raise StripeError(
                400, "This value must be greater than or equal to 1 and less than or equal to 100.",
                code="parameter_invalid_integer", param="limit",
            )  # fmt: skip
        rows = [o for o in self.store.ordered(objects) if self.matches(resource, o, params)]
        after, before = params.get("starting_after"), params.get("ending_before")
        if after and before:
            raise StripeError(
                400, "You may only specify one of these parameters: ending_before, starting_after.",
                param="starting_after",
            )  # fmt: skip
        ids = [o["id"] for o in rows]
        for cursor, param in ((after, "starting_after"), (before, "ending_before")):
            if cursor and cursor not in objects:
                raise StripeError(400, f"Invalid {param} id: {cursor}", code="resource_missing", param=param)
        if after:
            position = ids.index(after) + 1 if after in ids else len(ids)
            page, has_more = rows[position : position + limit], len(rows) > position + limit
        elif before:
            position = ids.index(before) if before in ids else 0
            start = max(position - limit, 0)
            page, has_more = rows[start:position], start > 0
        else:
            page, has_more = rows[:limit], len(rows) > limit
        expand = params.get("expand", [])
        for field in expand:
            if not field.startswith("data.") or field[5:] not in EXPANDABLE:
                raise StripeError(400, f"This property cannot be expanded ({field}).", param="expand")
        data = [self.expand(copy.deepcopy(o), expand, prefix="data.") for o in page]
        return {"object": "list", "data": data, "has_more": has_more, "url": url}

    def matches(self, resource: str, obj: dict[str, Any], params: dict[str, Any]) -> bool:
        if resource == "subscriptions":
            status = params.get("status")
            if status is None and obj.get("status") in {"canceled", "incomplete_expired"}:
                return False  # Stripe's default: subscriptions that have not been canceled
            if status not in (None, "all") and obj.get("status") != status:
                return False
            if "customer" in params and obj.get("customer") != params["customer"]:
                return False
            if "price" in params:
                items = (obj.get("items") or {}).get("data") or []
                if not any((i.get("price") or {}).get("id") == params["price"] for i in items):
                    return False
        if resource == "customers" and "email" in params and obj.get("email") != params["email"]:
            return False
        if resource == "prices" and "product" in params and obj.get("product") != params["product"]:
            return False
        if resource == "events":
            wanted = params.get("types") or ([params["type"]] if "type" in params else [])
            if wanted and not any(fnmatch.fnmatchcase(obj["type"], w) for w in wanted):
                return False
        return True

    def expand(self, obj: dict[str, Any], fields: list[str], *, prefix: str) -> dict[str, Any]:
        for field in fields:
            if not field.startswith(prefix) or field[len(prefix) :] not in EXPANDABLE:
                raise StripeError(400, f"This property cannot be expanded ({field}).", param="expand")
            path = field[len(prefix) :]
            if path == "items.data.price.product" and isinstance(obj.get("items"), dict):
                for item in obj["items"].get("data") or []:
                    price = item.get("price") or {}
                    product = self.store.products.get(str(price.get("product")))
                    if product is not None:
                        price["product"] = copy.deepcopy(product)
            elif path == "customer" and isinstance(obj.get("customer"), str):
                customer = self.store.customers.get(obj["customer"])
                if customer is not None:
                    obj["customer"] = copy.deepcopy(customer)
        return obj


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalStripe:
    """The server on a port chosen at run time, in a background thread. A context manager."""

    def __init__(
        self, store: StripeStore | None = None, *, api_key: str = DEFAULT_API_KEY, host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:  # fmt: skip
        self.store = store or StripeStore()
        self.api_key = api_key
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            StripeApp(self.store, {api_key}), log_config=None, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LocalStripe:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the local Stripe server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
