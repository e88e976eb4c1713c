"""The console's routes: thin, as the API's are. Each reads the form, calls the service the
``/v1/admin/…`` route calls, and answers a page (or a redirect back to it, so an action shows at once).

Authentication, the staff permission (``opt=auth.staff_only(...)``, the one rule, enforced by
``api.deps.authenticate_request``) and the CSRF token are checked before a handler runs.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from litestar import Controller, Request, Response, Router, get, post
from litestar.datastructures import Cookie, State
from litestar.params import Parameter
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_303_SEE_OTHER
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession

from api.admin import services as admin
from api.audit import services as audit
from api.audit.verify import Split
from api.auth import services as auth
from api.auth.context import Actor, Principal, RequestContext
from api.auth.permissions import StaffPermission
from api.billing.services import run_reconciliation
from api.billing.stripe_api import StripeUnavailable
from api.console import sessions, views
from api.deps import CONSOLE_SECRET, CSRF_FIELD, PUBLIC, provide_context
from api.errors import KeelError, NotFound, ServiceUnavailable, Unauthorized, ValidationFailed
from api.flags import services as flags
from api.limits import count_failed_auth, refuse_locked_out_address
from api.orgs.models import Organization
from api.problems import keel_error
from api.webhooks import deliveries, endpoints, inbound

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: Longest reason an action accepts (the API's suspend reason has the same bound).
MAX_REASON = 500
SEARCH_LIMIT = 50
#: The search page, and (for htmx, as the box is typed in) its results alone.
SEARCH_TEMPLATES = {False: "search.html", True: "search_results.html"}

#: Every console answer: no inline script (htmx is a file Keel serves), no framing, no referrer
#: (a sign-in link is in a URL), nothing cached.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)

#: What a redirect's ``done=`` says on the page (only these words are ever shown).
DONE = {
    "suspended": "The organization is suspended.",
    "unsuspended": "The suspension is lifted.",
    "retried": "The delivery is queued to be sent again now.",
    "recovered": "The endpoint's failed deliveries are queued to be sent again.",
    "reprocessed": "The inbound event was processed again.",
    "override_set": "The flag override is set.",
    "override_cleared": "The flag override is cleared.",
    "reconciled": "Reconciliation ran; its findings for this organization are below.",
}


def security_headers(app: ASGIApp) -> ASGIApp:
    """Middleware of the console's router: its pages, redirects, errors and static files alike."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in SECURITY_HEADERS if k not in names),
                ]
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


def wants_html(request: Request[Any, Any, Any]) -> bool:
    return "text/html" in (request.headers.get("accept") or "")


def console_error(request: Request[Any, Any, Any], exc: KeelError) -> Response[Any]:
    """A browser without a session is sent to sign in; a browser gets an error page; anything
    else (a script, a forged POST without Accept: text/html) the problem document the API sends."""
    if isinstance(exc, Unauthorized) and request.method == "GET" and not request.headers.get("hx-request"):
        return Redirect("/console/login", status_code=HTTP_303_SEE_OTHER)
    if wants_html(request):
        context = {"status": exc.status_code, "detail": exc.detail}
        if CONSOLE_SECRET in request.scope.get("state", {}):
            return page(request, "error.html", status_code=exc.status_code, **context)
        return Template(template_name="error.html", context=context, status_code=exc.status_code)
    return keel_error(request, exc)


def page(request: Request[Any, Any, Any], template: str, status_code: int = 200, **context: Any) -> Template:
    """A signed-in page: who is signed in, what they may do, and the CSRF token for its forms."""
    principal: Principal = request.scope["state"]["principal"]
    return Template(
        template_name=template,
        status_code=status_code,
        context={
            "me": principal,
            "csrf": sessions.csrf_token(request.scope["state"][CONSOLE_SECRET]),
            "csrf_field": CSRF_FIELD,
            "may_administer": views.may(principal, StaffPermission.administer),
            "may_operate": views.may(principal, StaffPermission.operate),
            **context,
        },
    )


async def form_of(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def confirmed_reason(form: dict[str, str]) -> str:
    """Each action is confirmed (the box ticked) and gives a reason, kept in its audit entry."""
    if form.get("confirm") != "yes":
        raise ValidationFailed("confirm the action: tick the confirmation box", field="confirm")
    reason = (form.get("reason") or "").strip()
    if not reason:
        raise ValidationFailed("give a reason: it goes into the audit log", field="reason")
    if len(reason) > MAX_REASON:
        raise ValidationFailed(f"the reason is longer than {MAX_REASON} characters", field="reason")
    return reason


def back_to(org_id: uuid.UUID, done: str, anchor: str) -> Redirect:
    return Redirect(f"/console/orgs/{org_id}?done={done}#{anchor}", status_code=HTTP_303_SEE_OTHER)


def staff(principal: Principal) -> Actor:
    return Actor.of(principal, as_staff=True)


def session_cookie(state: State, value: str, *, end: bool = False) -> Cookie:
    return Cookie(
        key=sessions.cookie_name(state.settings),
        value=value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=state.settings.console_secure_cookie,
        max_age=0 if end else None,
    )


class ConsoleSignInController(Controller):
    """Sign-in and sign-out: the only console routes without a session."""

    path = "/console"

    @get("/login", opt=PUBLIC, include_in_schema=False)
    async def sign_in_page(self, state: State) -> Template:
        nonce = secrets.token_urlsafe(24)
        return Template(
            template_name="login.html",
            context={"signin_csrf": nonce, "csrf_field": CSRF_FIELD, "error": None},
            cookies=[
                Cookie(
                    key=sessions.PRE_COOKIE,
                    value=nonce,
                    path="/console/login",
                    httponly=True,
                    samesite="strict",
                    secure=state.settings.console_secure_cookie,
                    max_age=600,
                )
            ],
        )

    @post("/login", opt=PUBLIC, include_in_schema=False, status_code=HTTP_303_SEE_OTHER)
    async def exchange_token(
        self, request: Request[Any, Any, Any], db: AsyncSession, state: State
    ) -> Response[Any]:
        form = await form_of(request)
        expected = request.cookies.get(sessions.PRE_COOKIE)
        if not expected or not secrets.compare_digest(expected, form.get(CSRF_FIELD, "")):
            raise ValidationFailed("the sign-in form expired; reload the page", field=CSRF_FIELD)
        token = form.get("token", "").strip()
        if not token:
            raise ValidationFailed("paste your user token", field="token")
        # A wrong token here spends the address's failed attempts, as a wrong bearer token does.
        refuse_locked_out_address(state.limits, request.scope)
        try:
            opened = await sessions.exchange_token(
                db, token=token, settings=state.settings, ctx=provide_context(request)
            )
        except Unauthorized:
            count_failed_auth(state.limits, request.scope)
            raise
        response: Response[Any] = Redirect("/console", status_code=HTTP_303_SEE_OTHER)
        response.set_cookie(session_cookie(state, opened.secret))
        response.delete_cookie(sessions.PRE_COOKIE, path="/console/login")
        return response

    @get("/login/{secret:str}", opt=PUBLIC, include_in_schema=False)
    async def redeem_link(
        self, secret: str, request: Request[Any, Any, Any], db: AsyncSession, state: State
    ) -> Template:
        refuse_locked_out_address(state.limits, request.scope)
        try:
            opened = await sessions.redeem_link(
                db, secret=secret, settings=state.settings, ctx=provide_context(request)
            )
        except Unauthorized as exc:
            count_failed_auth(state.limits, request.scope)
            # Said on the sign-in page (a used or expired link is the common case), not redirected.
            return Template(
                template_name="login.html",
                context={"csrf_field": CSRF_FIELD, "error": exc.detail, "link_refused": True},
                status_code=exc.status_code,
            )
        # A page, not a redirect: a Strict cookie set in answer to a link followed from elsewhere
        # (a mail client) would not be sent on a redirect; the page's own refresh is same-site.
        return Template(
            template_name="signed_in.html",
            context={"email": opened.user.email},
            cookies=[session_cookie(state, opened.secret)],
        )

    @post(
        "/logout",
        opt=auth.staff_only(StaffPermission.read),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def sign_out(
        self,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        state: State,
        principal: Principal,
        ctx: RequestContext,
    ) -> Response[Any]:
        await sessions.sign_out(db, session_id=principal.token_id, actor=staff(principal), ctx=ctx)
        response: Response[Any] = Redirect("/console/login", status_code=HTTP_303_SEE_OTHER)
        response.set_cookie(session_cookie(state, "", end=True))
        return response


class ConsoleController(Controller):
    path = "/console"

    @get("/", opt=auth.staff_only(StaffPermission.read), include_in_schema=False)
    async def search(
        self,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        state: State,
        q: Annotated[str | None, Parameter(default=None, max_length=200)],
    ) -> Template:
        q = (q or "").strip() or None
        results = await views.search(db, state.settings.resolved_warehouse_path, q, SEARCH_LIMIT)
        # htmx asks for the results alone as the box is typed in; a plain GET gets the whole page.
        fragment = bool(request.headers.get("hx-request"))
        return page(request, SEARCH_TEMPLATES[fragment], q=q or "", results=results, searched=q is not None)

    @get("/orgs/{org_id:uuid}", opt=auth.staff_only(StaffPermission.read), include_in_schema=False)
    async def org(
        self,
        org_id: uuid.UUID,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        state: State,
        principal: Principal,
        ctx: RequestContext,
        done: Annotated[str | None, Parameter(default=None, max_length=40)],
    ) -> Template:
        loaded = await views.org_page(
            views.OrgPage(
                org_id=org_id,
                db=db,
                engine=state.engine,
                warehouse=state.settings.resolved_warehouse_path,
                principal=principal,
                ctx=ctx,
                split=Split.of(state.settings),
            )
        )
        return page(
            request,
            "org.html",
            org=loaded.view.org if loaded.view else None,
            sections=views.SECTIONS,
            data=loaded.data,
            done=DONE.get(done or ""),
        )

    @post(
        "/orgs/{org_id:uuid}/suspend",
        opt=auth.staff_only(StaffPermission.administer),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def suspend(
        self,
        org_id: uuid.UUID,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        reason = confirmed_reason(await form_of(request))
        await admin.set_suspended(
            db, org_id=org_id, suspended=True, reason=reason, actor=staff(principal), ctx=ctx
        )
        return back_to(org_id, "suspended", "overview")

    @post(
        "/orgs/{org_id:uuid}/unsuspend",
        opt=auth.staff_only(StaffPermission.administer),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def unsuspend(
        self,
        org_id: uuid.UUID,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        reason = confirmed_reason(await form_of(request))
        await admin.set_suspended(
            db, org_id=org_id, suspended=False, reason=reason, actor=staff(principal), ctx=ctx
        )
        return back_to(org_id, "unsuspended", "overview")

    @post(
        "/orgs/{org_id:uuid}/deliveries/{delivery_id:uuid}/retry",
        opt=auth.staff_only(StaffPermission.operate),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def retry_delivery(
        self,
        org_id: uuid.UUID,
        delivery_id: uuid.UUID,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        reason = confirmed_reason(await form_of(request))
        await deliveries.retry_delivery(
            db, delivery_id=delivery_id, org_id=org_id, actor=staff(principal), ctx=ctx, reason=reason
        )
        return back_to(org_id, "retried", "webhooks")

    @post(
        "/orgs/{org_id:uuid}/endpoints/{endpoint_id:uuid}/recover",
        opt=auth.staff_only(StaffPermission.operate),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def recover_endpoint(
        self,
        org_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        form = await form_of(request)
        reason = confirmed_reason(form)
        try:
            hours = int(form.get("hours", "24"))
        except ValueError:
            raise ValidationFailed("hours: a whole number of hours", field="hours") from None
        if not 1 <= hours <= 24 * 30:
            raise ValidationFailed("hours: between 1 and 720", field="hours")
        await endpoints.recover(
            db,
            org_id=org_id,
            endpoint_id=endpoint_id,
            since=datetime.now(UTC) - timedelta(hours=hours),
            actor=staff(principal),
            ctx=ctx,
            reason=reason,
        )
        return back_to(org_id, "recovered", "webhooks")

    @post(
        "/orgs/{org_id:uuid}/inbound-events/{event_id:uuid}/reprocess",
        opt=auth.staff_only(StaffPermission.operate),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def reprocess_inbound(
        self,
        org_id: uuid.UUID,
        event_id: uuid.UUID,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        reason = confirmed_reason(await form_of(request))
        await inbound.reprocess(db, event_id=event_id, actor=staff(principal), ctx=ctx, reason=reason)
        return back_to(org_id, "reprocessed", "inbound")

    @post(
        "/orgs/{org_id:uuid}/flags/{key:str}/override",
        opt=auth.staff_only(StaffPermission.administer),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def set_override(
        self,
        org_id: uuid.UUID,
        key: str,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        form = await form_of(request)
        reason = confirmed_reason(form)
        if form.get("enabled") not in {"on", "off"}:
            raise ValidationFailed("enabled: choose on or off", field="enabled")
        await flags.set_override(
            db,
            key=key,
            org_id=org_id,
            enabled=form["enabled"] == "on",
            reason=reason,
            actor=staff(principal),
            ctx=ctx,
            user_id=principal.user_id,
        )
        return back_to(org_id, "override_set", "flags")

    @post(
        "/orgs/{org_id:uuid}/flags/{key:str}/override/clear",
        opt=auth.staff_only(StaffPermission.administer),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def clear_override(
        self,
        org_id: uuid.UUID,
        key: str,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        confirmed_reason(await form_of(request))
        await flags.remove_override(db, key=key, org_id=org_id, actor=staff(principal), ctx=ctx)
        return back_to(org_id, "override_cleared", "flags")

    @post(
        "/orgs/{org_id:uuid}/reconcile",
        opt=auth.staff_only(StaffPermission.operate),
        include_in_schema=False,
        status_code=HTTP_303_SEE_OTHER,
    )
    async def reconcile(
        self,
        org_id: uuid.UUID,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        state: State,
        principal: Principal,
        ctx: RequestContext,
    ) -> Redirect:
        """Re-run reconciliation (Stripe is read whole, as ``keel billing reconcile`` does; the page
        shows this org's findings); the request is audited on the org's chain."""
        reason = confirmed_reason(await form_of(request))
        if await db.get(Organization, org_id) is None:
            raise NotFound("organization not found")
        settings = state.settings
        try:
            # Blocking (it reads Stripe and runs on its own engine): off the event loop.
            result, _ = await anyio.to_thread.run_sync(
                lambda: run_reconciliation(settings, settings.database_url or "")
            )
        except StripeUnavailable as exc:
            raise ServiceUnavailable(
                f"reconciliation could not read Stripe: {exc}", retry_after=None
            ) from None
        await audit.record(
            db, action="billing.reconciliation_requested", actor=staff(principal), ctx=ctx,
            organization_id=org_id, resource_type="reconciliation_run", resource_id=result.run_id,
            metadata={
                "reason": reason,
                "discrepancies_for_org": sum(1 for f in result.found if f.organization_id == org_id),
            },
        )  # fmt: skip
        return back_to(org_id, "reconciled", "billing")

    @get("/health", opt=auth.staff_only(StaffPermission.read), include_in_schema=False)
    async def health(
        self,
        request: Request[Any, Any, Any],
        db: AsyncSession,
        state: State,
        principal: Principal,
        ctx: RequestContext,
        sort: Annotated[str, Parameter(default="score", pattern="^(score|name|trend|wau)$")],
        at_risk: Annotated[bool, Parameter(default=False)],
    ) -> Template:
        loaded = await views.health_page(
            db,
            state.settings.resolved_warehouse_path,
            sort=sort,
            at_risk=at_risk,
            actor=staff(principal),
            ctx=ctx,
        )
        return page(request, "health.html", health=loaded, sort=sort, at_risk=at_risk)


def console_router() -> Router:
    """``/console``: the pages, the sign-in routes and the console's own files (htmx, CSS)."""
    static = create_static_files_router(
        path="/console/static", directories=[STATIC], opt=PUBLIC, include_in_schema=False
    )
    return Router(
        path="/",
        route_handlers=[ConsoleSignInController, ConsoleController, static],
        exception_handlers={KeelError: console_error},
        middleware=[security_headers],
    )
