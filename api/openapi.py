"""OpenAPI additions Litestar cannot infer: every operation may answer a problem+json error."""

from __future__ import annotations

import re

from litestar import Litestar
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Reference, Schema

from api.schemas import Struct

_PATH_TYPE = re.compile(r"{(\w+):\w+}")  # "{org_id:uuid}" in a route is "{org_id}" in the document
#: Route option: the media types a streaming route may answer with (one per format it offers).
MEDIA_TYPES = "media_types"

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "title", "status", "detail"],
    properties={
        "type": Schema(type=OpenAPIType.STRING),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
        "instance": Schema(type=OpenAPIType.STRING),
        "request_id": Schema(type=OpenAPIType.STRING),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["field", "message"],
                properties={
                    "field": Schema(type=OpenAPIType.STRING),
                    "message": Schema(type=OpenAPIType.STRING),
                },
            ),
        ),
    },
    description="An RFC 9457 problem: `detail` says what went wrong; `errors` names the fields at fault.",
)


def _strict_struct_names() -> set[str]:
    names: set[str] = set()
    pending = list(Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


def document_problems(app: Litestar) -> None:
    """Add the Problem schema and a ``4XX``/``5XX`` problem answer to every operation; mark public ones."""
    spec = app.openapi_schema
    assert spec.components is not None
    spec.components.schemas = {**(spec.components.schemas or {}), "Problem": PROBLEM_SCHEMA}
    # Request bodies refuse unknown fields; say so, so clients (and fuzzers) know.
    for name in _strict_struct_names():
        component = spec.components.schemas.get(name)
        if isinstance(component, Schema):
            component.additional_properties = False
    public = {
        (route.path, method.lower())
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if handler.opt.get("public")
        for method in getattr(handler, "http_methods", ())
    }
    # Routes that stream a body in more than one format name them in opt["media_types"].
    streamed = {
        (_PATH_TYPE.sub(r"{\1}", route.path), method.lower()): handler.opt[MEDIA_TYPES]
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if handler.opt.get(MEDIA_TYPES)
        for method in getattr(handler, "http_methods", ())
    }
    problem = {
        "application/problem+json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
    }
    for path, path_item in (spec.paths or {}).items():
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(path_item, method, None)
            if operation is None:
                continue
            if (path, method) in public:
                operation.security = []  # needs no token
            if (path, method) in streamed:
                text = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
                operation.responses = {
                    **(operation.responses or {}),
                    "200": OpenAPIResponse(
                        description="The body, streamed.",
                        content={media_type: text for media_type in streamed[(path, method)]},
                    ),
                }
            # Litestar documents its own 400 shape; Keel answers every error as a problem instead.
            operation.responses = {k: v for k, v in (operation.responses or {}).items() if k != "400"}
            operation.responses.setdefault(
                "4XX", OpenAPIResponse(description="A client error.", content=problem)
            )
            operation.responses.setdefault(
                "5XX",
                OpenAPIResponse(description="The server or its database is unavailable.", content=problem),
            )
