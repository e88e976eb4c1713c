"""OpenAPI additions Litestar cannot infer: every operation may answer a problem+json error."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    RequestBody,
    Schema,
)

from api.schemas import Struct

_PATH_TYPE = re.compile(r"{(\w+):\w+}")  # "{org_id:uuid}" in a route is "{org_id}" in the document
#: Route option naming the media types a route answers in: a list (bodies as text), or a mapping
#: of media type to the JSON type of its body.
MEDIA_TYPES = "media_types"
#: Route option: answers in a shape of their own, not problem+json (OFREP's), as
#: ``{status: (description, msgspec Struct or None for no body)}``; JSON bodies.
OWN_RESPONSES = "own_responses"

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


_RENAMES = {
    "additionalProperties": "additional_properties",
    "anyOf": "any_of",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_items",
    "maxItems": "max_items",
    "minProperties": "min_properties",
    "maxProperties": "max_properties",
}


def _from_json_schema(node: dict[str, Any]) -> Schema | Reference:
    """msgspec's JSON Schema as Litestar's OpenAPI objects (the subset msgspec emits for our structs)."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    fields: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            value = {name: _from_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _from_json_schema(value)
        elif key == "anyOf":
            value = [_from_json_schema(sub) for sub in value]
        elif key == "type":
            value = OpenAPIType(value)
        fields[_RENAMES.get(key, key)] = value
    return Schema(**fields)


def _strict_structs() -> list[type[Struct]]:
    found: list[type[Struct]] = []
    pending = list(Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


_BOUNDS = (("ge", "minimum"), ("gt", "exclusive_minimum"), ("le", "maximum"), ("lt", "exclusive_maximum"))


def _restore_zero_bounds(cls: type[Struct], component: Schema) -> None:
    """Litestar drops a numeric bound equal to 0 on optional fields (it tests the bound for truth),
    so a PATCH body's ``rollout_percentage >= 0`` would vanish from the document: put it back."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        kind = field.type.type if isinstance(field.type, msgspec.inspect.Metadata) else field.type
        prop = (component.properties or {}).get(field.encode_name)
        if not isinstance(kind, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
            continue
        if not isinstance(prop, Schema):
            continue
        for bound, key in _BOUNDS:
            if getattr(kind, bound) == 0 and getattr(prop, key) is None:
                setattr(prop, key, 0)


def _arrays(prop: Schema | Reference | None) -> list[Schema]:
    if not isinstance(prop, Schema):
        return []
    if prop.items is not None:
        return [prop]
    return [a for sub in [*(prop.one_of or ()), *(prop.any_of or ())] for a in _arrays(sub)]


def _restore_item_constraints(cls: type[Struct], component: Schema) -> None:
    """Litestar documents ``list[Annotated[str, Meta(pattern=...)]]`` as a list of any string,
    dropping the items' bounds and pattern, so clients (and fuzzers) would send items the API
    rightly refuses: take each array's items from msgspec's own schema of the struct."""
    _, components = msgspec.json.schema_components([cls], ref_template="#/components/schemas/{name}")
    properties = components[cls.__name__].get("properties", {})
    for name, prop in (component.properties or {}).items():
        node = properties.get(name) or {}
        arrays = [node, *node.get("anyOf", [])]  # ``list[...] | None`` is an anyOf in msgspec's schema
        items = next((a["items"] for a in arrays if isinstance(a, dict) and "items" in a), None)
        if not isinstance(items, dict) or "$ref" in items:
            continue
        for array in _arrays(prop):
            array.items = _from_json_schema(items)


def _media_kinds(value: list[str] | dict[str, str]) -> dict[str, str]:
    return dict(value) if isinstance(value, dict) else dict.fromkeys(value, "string")


def document_problems(app: Litestar) -> None:
    """Add the Problem schema and a ``4XX``/``5XX`` problem answer to every operation; mark public ones."""
    spec = app.openapi_schema
    assert spec.components is not None
    spec.components.schemas = {**(spec.components.schemas or {}), "Problem": PROBLEM_SCHEMA}
    # Request bodies refuse unknown fields; say so, so clients (and fuzzers) know.
    for cls in _strict_structs():
        component = spec.components.schemas.get(cls.__name__)
        if isinstance(component, Schema):
            component.additional_properties = False
            _restore_zero_bounds(cls, component)
            _restore_item_constraints(cls, component)
    public = {
        (route.path, method.lower())
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if handler.opt.get("public")
        for method in getattr(handler, "http_methods", ())
    }
    # Bulk routes read their own bodies (for gzip and size limits); document what they read.
    raw_bodies = {
        (route.path, method.lower()): handler.opt["request_body"]
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if "request_body" in handler.opt
        for method in getattr(handler, "http_methods", ())
    }
    own = {
        (_PATH_TYPE.sub(r"{\1}", route.path), method.lower()): handler.opt[OWN_RESPONSES]
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if handler.opt.get(OWN_RESPONSES)
        for method in getattr(handler, "http_methods", ())
    }
    own_types = {t for answers in own.values() for _d, t in answers.values() if t is not None}
    if raw_bodies or own_types:
        _, components = msgspec.json.schema_components(
            set(raw_bodies.values()) | own_types, ref_template="#/components/schemas/{name}"
        )
        for name, body in components.items():
            spec.components.schemas[name] = _from_json_schema(body)  # type: ignore[assignment]
    # Routes that answer in several formats (or stream text) name them in opt[MEDIA_TYPES].
    formats = {
        (_PATH_TYPE.sub(r"{\1}", route.path), method.lower()): _media_kinds(handler.opt[MEDIA_TYPES])
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
            if (path, method) in raw_bodies:
                name = raw_bodies[(path, method)].__name__
                operation.request_body = RequestBody(
                    required=True,
                    content={
                        "application/json": OpenAPIMediaType(
                            schema=Reference(ref=f"#/components/schemas/{name}")
                        )
                    },
                )
            if (path, method) in public:
                operation.security = []  # needs no token
            if (path, method) in formats:
                operation.responses = {
                    **(operation.responses or {}),
                    "200": OpenAPIResponse(
                        description="The body, in the format asked for.",
                        content={
                            media: OpenAPIMediaType(schema=Schema(type=OpenAPIType(kind)))
                            for media, kind in formats[(path, method)].items()
                        },
                    ),
                }
            # Litestar documents its own 400 shape; Keel answers every error as a problem instead.
            operation.responses = {k: v for k, v in (operation.responses or {}).items() if k != "400"}
            for status, (description, shape) in own.get((path, method), {}).items():
                operation.responses[str(status)] = OpenAPIResponse(
                    description=description,
                    content=None
                    if shape is None
                    else {
                        "application/json": OpenAPIMediaType(
                            schema=Reference(ref=f"#/components/schemas/{shape.__name__}")
                        )
                    },
                )
            operation.responses.setdefault(
                "4XX", OpenAPIResponse(description="A client error.", content=problem)
            )
            operation.responses.setdefault(
                "5XX",
                OpenAPIResponse(description="The server or its database is unavailable.", content=problem),
            )
