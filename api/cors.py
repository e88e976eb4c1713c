"""CORS on the browser routes only (those whose handlers carry ``api.auth.services.BROWSER``).

A preflight carries no credentials, so it is answered for any origin: which origins a key is
accepted from is the key's own ``allowed_origins``, enforced on the real request by
``api.auth.services.check_key_reach`` (403 problem, without ``Access-Control-Allow-Origin``). A
request that got through is answered with ``Access-Control-Allow-Origin`` naming its origin and
``Access-Control-Expose-Headers`` (``ETag``, ``Retry-After``: without it a page cannot read them) —
never ``*``, and never with credentials (Keel's keys travel in the Authorization header, not in
cookies). Every other route sends no CORS headers at all, so a browser cannot read it cross-origin.
"""

from __future__ import annotations

from collections.abc import Iterable

from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.auth.services import BROWSER

#: What a Segment or OpenFeature browser SDK sends: its key, a JSON (or text/plain) body, gzip,
#: analytics.js's attempt counter (``X-Retry-Count``, on every call it sends) and the OFREP web
#: provider's ``If-None-Match`` (the bulk answer's ETag, on every poll after the first).
ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding, X-Retry-Count, If-None-Match"
#: The answer headers a page's script may read beyond the CORS-safelisted ones: the OFREP web
#: provider revalidates with the bulk answer's ``ETag``, and both SDKs honour ``Retry-After`` on a 429.
EXPOSED_HEADERS = b"ETag, Retry-After"
ALLOWED_METHODS = b"GET, POST, OPTIONS"
#: How long a browser may reuse a preflight answer (seconds).
MAX_AGE = b"600"
#: Set by ``authenticate_request`` when the key refused the request's origin: no CORS grant then.
ORIGIN_REFUSED = "keel_origin_refused"


def browser_paths(routes: Iterable[object]) -> frozenset[str]:
    """The paths of the routes a browser may call, read from their handlers' option."""
    return frozenset(
        route.path
        for route in routes
        if isinstance(route, HTTPRoute) and any(h.opt.get(BROWSER) for h in route.route_handlers)
    )


def _origin(scope: Scope) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"origin":
            return value
    return None


def cors_middleware(handler: ASGIApp, paths: frozenset[str]) -> ASGIApp:
    """Wrap the router: add CORS headers to the answers of the browser routes."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await handler(scope, receive, send)
            return
        origin = _origin(scope)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                route_handler = scope.get("route_handler")
                # A handler carries the option itself; Litestar's generated OPTIONS handler is known
                # by its full path (a handler's own ``paths`` are relative to its controller).
                opt = getattr(route_handler, "opt", None) or {}
                route_paths = getattr(route_handler, "paths", None) or ()
                if opt.get(BROWSER) or any(p in paths for p in route_paths):
                    headers = list(message.get("headers", []))
                    headers.append((b"vary", b"Origin"))
                    refused = scope.get("state", {}).get(ORIGIN_REFUSED)
                    if origin is not None and not refused:
                        headers.append((b"access-control-allow-origin", origin))
                        if scope.get("method") != "OPTIONS":
                            headers.append((b"access-control-expose-headers", EXPOSED_HEADERS))
                        else:
                            headers += [
                                (b"access-control-allow-methods", ALLOWED_METHODS),
                                (b"access-control-allow-headers", ALLOWED_HEADERS),
                                (b"access-control-max-age", MAX_AGE),
                            ]
                    message["headers"] = headers
            await send(message)

        await handler(scope, receive, send_wrapper)

    return wrapped
