"""Per-request dependencies: the database session, the caller, and the request's context."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.types import Scope
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import cache, secrets
from api.auth import services as auth
from api.auth.context import Principal, RequestContext
from api.console import sessions as console_sessions
from api.cors import ORIGIN_REFUSED
from api.db.reads import Reader
from api.errors import Forbidden, Unauthorized
from api.limits import charge_request, count_failed_auth, refuse_locked_out_address

PUBLIC = {"public": True}
ADMIN_PREFIX = "/v1/admin/"
#: The staff console: the same staff permissions, resolved from a session cookie instead of a token.
CONSOLE_PATH = "/console"
CONSOLE_PREFIX = "/console/"
#: Methods that change nothing: the only ones a console request may send without its CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Where a console form puts its CSRF token (htmx requests may send the header instead).
CSRF_FIELD = "csrf_token"
CSRF_HEADER = b"x-csrf-token"
OPENAPI_PATH = "/schema"
#: Where ``authenticate_request`` leaves the caller, in the request scope's state.
PRINCIPAL = "principal"
#: Where ``authenticate_request`` leaves a console request's session secret (its CSRF token's key).
CONSOLE_SECRET = "console_secret"


async def provide_db(state: State) -> AsyncGenerator[AsyncSession, None]:
    """One transaction per request: committed when the handler succeeds, before the answer is sent."""
    async with state.sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


@dataclass(frozen=True, slots=True)
class ReadContext:
    """What a route that only reads takes, as its one dependency: the caller and the
    :class:`~api.db.reads.Reader` (reads outside a transaction, ``api/db/reads.py``).

    One dependency rather than ``principal`` and ``reader``: Litestar resolves each dependency
    with a signature model of its own (its arguments converted by msgspec) and a call, and
    independent ones together in an anyio task group (a task each); this one takes the request
    alone and reads what ``authenticate_request`` left in its scope."""

    principal: Principal
    reader: Reader


def provide_read_context(request: Request[Any, Any, Any]) -> ReadContext:
    return ReadContext(provide_principal(request), request.app.state.reader)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of one request header, straight from the ASGI scope (names are lower-case).

    Cheaper than ``request.headers``, which builds a case-insensitive multidict of them all; every
    authenticated request reads its Authorization header this way."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def authenticate_request(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: every route that is not marked public needs a valid token, and every
    ``/v1/orgs/{org_id}/...`` route a caller who belongs to that organization.

    Runs before the body is parsed, so a caller from outside learns nothing from validation errors,
    and a route added later cannot forget the tenant check. The rate limits on failed attempts,
    ingest keys and user writes are spent here too (``api/limits.py``), so every route has them.
    """
    scope = request.scope
    path: str = scope["path"]
    auth.forget_guarded_membership()
    if (
        request.route_handler.opt.get("public")
        or scope["method"] == "OPTIONS"
        or path.startswith(OPENAPI_PATH)
    ):
        return
    state = request.app.state
    console = path == CONSOLE_PATH or path.startswith(CONSOLE_PREFIX)
    secret: str | None = None
    if console:
        # The console: a session cookie instead of a bearer token, resolved afresh every time.
        secret = request.cookies.get(console_sessions.cookie_name(state.settings))
        async with state.sessionmaker() as session:
            principal = await console_sessions.resolve(session, secret=secret, settings=state.settings)
            await session.commit()
    else:
        principal = await _bearer_principal(request)
    charge_request(state.limits, principal, scope)
    try:
        auth.check_key_reach(principal, request.route_handler.opt, origin=_header(scope, b"origin"))
    except Forbidden:
        scope.setdefault("state", {})[ORIGIN_REFUSED] = True  # no CORS grant on the refusal
        raise
    if console or path.startswith(ADMIN_PREFIX):
        # Every staff route, enumerated by its prefix: the permission is the route's own option.
        auth.require_staff(principal, auth.staff_permission(request.route_handler.opt))
    org_id = request.path_params.get("org_id")
    if org_id is not None and not console and not path.startswith(ADMIN_PREFIX):
        # Outside any transaction (one read, or none when the membership's grant is cached).
        await auth.guard_org(state.reader, principal, org_id, opt=request.route_handler.opt)
    # The scope's state dict itself (``request.state`` would wrap it in a new State object each time).
    scope_state = scope.setdefault("state", {})
    scope_state[PRINCIPAL] = principal
    if console:
        assert secret is not None  # resolve() refused a request without one
        await _check_csrf(request, secret)
        scope_state[CONSOLE_SECRET] = secret


async def _bearer_principal(request: Request[Any, Any, Any]) -> Principal:
    """The bearer token's principal (cached), spending a failed attempt of the address on a 401."""
    scope, state = request.scope, request.app.state
    header = _header(scope, b"authorization")
    try:
        secret = auth.bearer_secret(header, basic=bool(request.route_handler.opt.get(auth.BASIC_WRITE_KEY)))
        digest = secrets.digest(secret)
        principal = cache.principals.get(digest)
        if principal is None:
            # An address out of failed attempts costs no lookup; a token already known still works.
            refuse_locked_out_address(state.limits, scope)
            principal = await cache.principals.get_or_load(digest, _authenticate, state, secret)
    except Unauthorized:
        count_failed_auth(state.limits, scope)
        raise
    return principal


async def _authenticate(state: State, secret: str) -> Principal:
    """A token not in ``cache.principals``: looked up (and its ``last_used_at`` touched) in a
    session of its own."""
    async with state.sessionmaker() as session:
        found = await auth.authenticate(session, secret, touch_interval=state.settings.token_touch_interval)
        await session.commit()
        return found


async def _check_csrf(request: Request[Any, Any, Any], secret: str) -> None:
    """A console request that may change something carries its session's CSRF token (a form field,
    or the header for htmx), checked after the session and the permission, before the handler."""
    if request.scope["method"] in SAFE_METHODS:
        return
    sent = _header(request.scope, CSRF_HEADER)
    if sent is None:
        field = (await request.form()).get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    if not console_sessions.csrf_matches(secret, sent):
        raise Forbidden("this form's CSRF token is missing or not this session's; reload the page")


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL)
    if principal is None:  # a public route asked for a principal: a programming error, said plainly
        raise Unauthorized("this route needs a token")
    return principal


def _valid_ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def provide_context(request: Request[Any, Any, Any]) -> RequestContext:
    return RequestContext(
        request_id=request.state.get("request_id") or str(uuid.uuid4()),
        ip=_valid_ip(request.client.host if request.client else None),
        user_agent=(request.headers.get("user-agent") or "")[:1000] or None,
    )
