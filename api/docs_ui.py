"""The API docs UI (Swagger UI at ``/schema`` and ``/schema/swagger``), served from Keel itself.

Litestar's render plugins load their JavaScript and CSS from a CDN, so the docs were blank on a
machine without internet. Swagger UI's files come from the ``swagger-ui-py`` package instead and are
served under ``/schema/assets``; the page inlines the OpenAPI document, so it needs nothing else.
(Scalar, the other UI Litestar offers, ships in no Python package: it is not served.)
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from litestar.openapi.plugins import OpenAPIRenderPlugin, SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

from api.deps import OPENAPI_PATH

ASSETS_PATH = f"{OPENAPI_PATH}/assets"
ASSETS_DIR = Path(swagger_ui.__file__).parent / "static"


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Swagger UI, the default page of ``/schema`` (the first plugin) and at ``/schema/swagger``."""
    return [
        SwaggerRenderPlugin(
            path="/swagger",
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        )
    ]


def assets_router() -> Router:
    """Swagger UI's own files (public, like the rest of ``/schema``; not in the OpenAPI document)."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[ASSETS_DIR], include_in_schema=False, opt={"public": True}
    )
