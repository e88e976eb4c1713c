"""The app factory: one place that registers controllers, dependencies and error handlers."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from api.admin.controllers import AdminController
from api.db.engine import make_async_engine, make_sessionmaker
from api.deps import authenticate_request, provide_context, provide_db, provide_principal
from api.members.controllers import MemberController
from api.observability import request_id_middleware
from api.orgs.controllers import OrgController
from api.problems import EXCEPTION_HANDLERS
from api.settings import Settings
from api.system.controllers import SystemController
from api.tokens.controllers import MyTokenController, OrgIngestKeyController, PlatformIngestKeyController

CONTROLLERS = [
    SystemController,
    OrgController,
    MemberController,
    MyTokenController,
    OrgIngestKeyController,
    PlatformIngestKeyController,
    AdminController,
]

#: Bodies of ordinary JSON routes; routes made for bulk data raise their own limit.
DEFAULT_MAX_BODY = 1024 * 1024


def create_app(settings: Settings) -> Litestar:
    """Build the API for ``settings``; ``settings.database_url`` must name the database."""
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (the CLI starts the embedded Postgres)")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        engine = make_async_engine(settings.database_url or "")
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        try:
            yield
        finally:
            await engine.dispose()

    return Litestar(
        route_handlers=CONTROLLERS,
        lifespan=[lifespan],
        dependencies={
            "db": Provide(provide_db),
            "principal": Provide(provide_principal),
            "ctx": Provide(provide_context, sync_to_thread=False),
        },
        before_request=authenticate_request,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_id_middleware],
        request_max_body_size=DEFAULT_MAX_BODY,
        logging_config=None,
        state=State({"settings": settings}),
        openapi_config=OpenAPIConfig(
            title="Keel API",
            version="1.0.0",
            description="Organizations, members, roles, tokens, events, audit log, flags, webhooks, billing.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            security=[{"bearer": []}],
        ),
    )
