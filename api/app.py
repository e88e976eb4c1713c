"""The app factory: one place that registers controllers, dependencies and error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins import PluginProtocol
from litestar.plugins.core import MsgspecDIPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.routes import HTTPRoute
from litestar.template import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api import docs_ui
from api.admin.controllers import AdminController
from api.analytics.controllers import AdminAnalyticsController, AnalyticsController
from api.audit.batch import AuditAppender
from api.audit.batch_controllers import AuditBatchController
from api.audit.checkpoint_controllers import AuditKeysController, OrgAuditCheckpointController
from api.audit.checkpoints import load_signing_key
from api.audit.controllers import AdminAuditController, AuditIngestController, OrgAuditController
from api.audit.streams.controllers import AuditStreamController
from api.billing.controllers import AdminBillingController, BillingController
from api.bodies import KeelRequest
from api.console.controllers import TEMPLATES, console_router
from api.cors import browser_paths, cors_middleware
from api.db.engine import libpq_url, make_async_engine, make_sessionmaker
from api.db.reads import Reader, make_read_pool
from api.deps import (
    authenticate_request,
    provide_context,
    provide_db,
    provide_principal,
    provide_read_context,
)
from api.events.controllers import EventController
from api.events.store import EventWriter, PartitionKeeper, keep_event_partitions, make_ingest_pool
from api.flags.admin import FlagScheduleController, SegmentAdminController, StaleFlagController
from api.flags.controllers import FlagAdminController, FlagEvaluationController
from api.flags.ofrep import OfrepController
from api.flags.store import FlagStore
from api.ingestion.controllers import AdminIngestionWarningController, OrgIngestionWarningController
from api.limits import Limits
from api.members.controllers import MemberController
from api.metrics import PROMETHEUS, MetricsController
from api.observability import request_id_middleware
from api.openapi import document_problems
from api.orgs.controllers import OrgController
from api.people.controllers import PeopleController
from api.problems import EXCEPTION_HANDLERS
from api.segment.controllers import SegmentController
from api.settings import Settings
from api.system.controllers import SystemController
from api.tokens.controllers import MyTokenController, OrgIngestKeyController, PlatformIngestKeyController
from api.webhooks.admin_controllers import AdminWebhookController, StripeWebhookController
from api.webhooks.controllers import (
    WebhookDeliveryController,
    WebhookEndpointController,
    WebhookMessageController,
)

CONTROLLERS = [
    SystemController,
    MetricsController,
    OrgController,
    MemberController,
    MyTokenController,
    OrgIngestKeyController,
    PlatformIngestKeyController,
    AdminController,
    EventController,
    SegmentController,
    OrgIngestionWarningController,
    AdminIngestionWarningController,
    PeopleController,
    AnalyticsController,
    AdminAnalyticsController,
    FlagAdminController,
    FlagEvaluationController,
    SegmentAdminController,
    FlagScheduleController,
    StaleFlagController,
    OfrepController,
    AuditIngestController,
    AuditBatchController,
    OrgAuditController,
    OrgAuditCheckpointController,
    AuditKeysController,
    AdminAuditController,
    AuditStreamController,
    BillingController,
    AdminBillingController,
    WebhookEndpointController,
    WebhookMessageController,
    WebhookDeliveryController,
    StripeWebhookController,
    AdminWebhookController,
]

#: Bodies of ordinary JSON routes; routes made for bulk data raise their own limit.
DEFAULT_MAX_BODY = 1024 * 1024


class KeelLitestar(Litestar):
    """Litestar with only the default plugin Keel uses.

    Keel's bodies, answers and dependencies are msgspec Structs and plain types: Litestar's msgspec
    plugin is all it needs. Litestar's own defaults add its pydantic and attrs plugins whenever
    those libraries are installed (they are, for Prefect), which imports pydantic into every server
    worker: ~10 MB of resident memory a worker for plugins nothing here uses."""

    @staticmethod
    def _get_default_plugins(plugins: list[PluginProtocol]) -> list[PluginProtocol]:
        plugins.append(MsgspecDIPlugin())
        return plugins


def create_app(settings: Settings) -> Litestar:
    """Build the API for ``settings``; ``settings.database_url`` must name the database."""
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (the CLI starts the embedded Postgres)")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        engine = make_async_engine(settings.database_url or "")
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        # Reads outside a transaction: the org guard, and routes that only read (api/db/reads.py).
        read_pool = make_read_pool(settings.database_url or "")
        await read_pool.open()
        app.state.reader = Reader(read_pool)
        app.state.audit_signing_key = load_signing_key(settings)
        # Events skip SQLAlchemy: autocommit statements on connections of their own, which small
        # requests share (api/events/store.py).
        ingest_pool = make_ingest_pool(libpq_url(settings.database_url or ""))
        await ingest_pool.open()
        app.state.partitions = PartitionKeeper(settings.events_dedupe_days)
        app.state.event_writer = EventWriter(ingest_pool, app.state.partitions)
        app.state.event_writer.start()
        app.state.audit_appender = AuditAppender(ingest_pool)
        upkeep = asyncio.create_task(keep_event_partitions(ingest_pool, app.state.partitions))
        # The flags' in-process copy: loaded before the first request, refreshed until shutdown.
        flags = FlagStore(engine, settings.database_url or "", poll_interval=settings.flags_poll_interval)
        await flags.start()
        app.state.flags = flags
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # way. Without this, each full collection walked ~100 MB of modules and stalled every
        # request in flight for ~150 ms (the single-event p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await flags.stop()
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
            await app.state.event_writer.stop()
            await ingest_pool.close()
            await read_pool.close()
            await engine.dispose()

    app = KeelLitestar(
        route_handlers=[*CONTROLLERS, docs_ui.assets_router(), console_router()],
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        lifespan=[lifespan],
        dependencies={
            "db": Provide(provide_db),
            "read_ctx": Provide(provide_read_context, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
            "ctx": Provide(provide_context, sync_to_thread=False),
        },
        before_request=authenticate_request,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[PROMETHEUS.middleware],
        request_max_body_size=DEFAULT_MAX_BODY,
        request_class=KeelRequest,
        logging_config=None,
        state=State({"settings": settings, "limits": Limits.from_settings(settings)}),
        openapi_config=OpenAPIConfig(
            title="Keel API",
            version="1.0.0",
            description="Organizations, members, roles, tokens, events, audit log, flags, webhooks, billing.",
            path="/schema",
            render_plugins=docs_ui.render_plugins(),
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
    )
    document_problems(app)
    allowed = {
        route.path: ", ".join(sorted(route.methods)) for route in app.routes if isinstance(route, HTTPRoute)
    }
    # Outermost, around Litestar's router: requests that match no route (404, 405) get a request id
    # and their access log line too (route middleware runs only once a route has matched).
    handler = cors_middleware(app.asgi_handler, browser_paths(app.routes))
    app.asgi_handler = request_id_middleware(_correct_allow_header(handler, allowed))
    return app


def _correct_allow_header(handler: ASGIApp, allowed: dict[str, str]) -> ASGIApp:
    """Litestar's generated OPTIONS answer lists only the methods of the first handler merged into a
    path; answer with every method the path supports."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "OPTIONS":
            await handler(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            route_handler = scope.get("route_handler")
            paths = getattr(route_handler, "paths", None)
            if message["type"] == "http.response.start" and paths:
                methods = allowed.get(next(iter(paths)))
                if methods:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                    message["headers"] = [*headers, (b"allow", methods.encode())]
            await send(message)

        await handler(scope, receive, send_wrapper)

    return wrapped
