"""Every error leaves as ``application/problem+json`` (RFC 9457), with field paths for validation."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import psycopg
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from psycopg import Error as PsycopgError
from psycopg_pool import PoolTimeout
from sqlalchemy.exc import DBAPIError, IntegrityError

from api.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE, KeelError
from api.schemas import split_validation_message

PROBLEM = PROBLEM_MEDIA_TYPE
log = logging.getLogger("keel.errors")

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    title = TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE_BASE}{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = errors
    body.update(extra)
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers)


def keel_error(request: Request[Any, Any, Any], exc: KeelError) -> Response[dict[str, Any]]:
    return problem(request, exc.status_code, exc.detail, errors=exc.errors, headers=exc.headers)


def _field_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", ""))
        key = str(item.get("key") or "")
        # The request body arrives as the handler's ``data`` argument; users know it as the body.
        field = "" if key in ("data", "body") else key
        path, message = split_validation_message(message)
        field = ".".join(p for p in (field, path) if p) if not path.startswith("[") else field + path
        errors.append({"field": field or "body", "message": message})
    return errors


def _missing_body(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]] | None:
    """A route that takes a body got none: Litestar says only ``'data'`` (the handler's argument);
    say that a body is required and name the fields it must have."""
    items = exc.extra if isinstance(exc.extra, list) else []
    if not any(
        isinstance(i, dict) and i.get("key") == "data" and i.get("message") == "'data'" for i in items
    ):
        return None
    field = getattr(request.route_handler, "parsed_data_field", None)
    body_type = getattr(field, "annotation", None)
    required: list[str] = []
    if isinstance(body_type, type) and issubclass(body_type, msgspec.Struct):
        required = [f.encode_name for f in msgspec.structs.fields(body_type) if f.required]
    # Bodies that are not JSON never get here: api.bodies refuses them first, by name.
    if not required:
        return problem(request, 400, "the request body is empty; send it as JSON", errors=[
            {"field": "body", "message": "a JSON request body is required"}
        ])  # fmt: skip
    names = ", ".join(f"`{name}`" for name in required)
    detail = f"the request body is empty; a JSON body is required, with {names}"
    return problem(request, 400, detail, errors=[{"field": name, "message": "required"} for name in required])


def validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    missing = _missing_body(request, exc)
    if missing is not None:
        return missing
    errors = _field_errors(exc)
    if not errors:
        return problem(request, 400, f"the request body could not be read: {exc.detail}")
    detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
    return problem(request, 422, detail, errors=errors)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    detail = exc.detail if exc.detail and exc.detail.lower() != TITLES.get(status, "").lower() else ""
    if status == 404 and not detail:
        detail = "no such route"
    if status == 405:
        detail = f"{request.method} is not allowed here"
    return problem(request, status, detail or TITLES.get(status, "error"), headers=exc.headers)


def integrity_error(request: Request[Any, Any, Any], exc: IntegrityError) -> Response[dict[str, Any]]:
    """A constraint the services did not pre-check (usually a race): never a 500."""
    code = getattr(exc.orig, "sqlstate", None)
    diag = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    if code == "23505":
        return problem(request, 409, f"conflicts with an existing record ({diag})")
    if code == "23503":
        return problem(request, 409, f"refers to a record that does not exist ({diag})")
    return problem(request, 422, f"violates a data rule ({diag})")


def database_error(
    request: Request[Any, Any, Any], exc: DBAPIError | PsycopgError
) -> Response[dict[str, Any]]:
    """Through SQLAlchemy (``exc.orig``) or straight from psycopg (the ingest path's own connections)."""
    error = getattr(exc, "orig", exc)
    code = getattr(error, "sqlstate", None) or ""
    if code.startswith("22"):  # data exception: a value Postgres cannot store
        return problem(request, 422, "a value is out of range or malformed for storage")
    if isinstance(error, psycopg.DataError):  # refused by the driver before sending, e.g. a NUL
        return problem(request, 422, f"a value cannot be stored: {error}")
    if code == "40001" or code == "40P01":
        return problem(
            request, 409, "a concurrent change conflicted with this one; retry", headers={"Retry-After": "1"}
        )
    log.exception("database error", extra={"fields": {"path": request.url.path}})
    return problem(request, 503, "the database is unavailable; retry shortly", headers={"Retry-After": "1"})


def pool_timeout(request: Request[Any, Any, Any], exc: PoolTimeout) -> Response[dict[str, Any]]:
    log.warning(
        "no database connection within the pool timeout", extra={"fields": {"path": request.url.path}}
    )
    return problem(request, 503, "the database is unavailable; retry shortly", headers={"Retry-After": "1"})


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", extra={"fields": {"path": request.url.path}})
    return problem(request, HTTP_500_INTERNAL_SERVER_ERROR, "an internal error occurred; it has been logged")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    KeelError: keel_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    IntegrityError: integrity_error,
    DBAPIError: database_error,
    PsycopgError: database_error,
    PoolTimeout: pool_timeout,
    Exception: internal_error,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM", "MediaType", "problem"]
