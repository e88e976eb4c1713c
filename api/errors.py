"""One error tree. Services raise these; one handler turns them into ``application/problem+json``."""

from __future__ import annotations

import math
from typing import Any

#: Every problem document's ``type`` is this base followed by the slug of its title.
PROBLEM_TYPE_BASE = "https://keel.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class KeelError(Exception):
    """A domain error with its HTTP status and a human ``detail``."""

    status_code = 400
    title = "Bad request"
    type_slug = "bad-request"

    def __init__(self, detail: str, *, errors: list[dict[str, str]] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.extra = extra


class BadRequest(KeelError):
    pass


class Unauthorized(KeelError):
    status_code = 401
    title = "Unauthorized"
    type_slug = "unauthorized"


class Forbidden(KeelError):
    status_code = 403
    title = "Forbidden"
    type_slug = "forbidden"


class NotFound(KeelError):
    status_code = 404
    title = "Not found"
    type_slug = "not-found"


class Conflict(KeelError):
    status_code = 409
    title = "Conflict"
    type_slug = "conflict"


class PayloadTooLarge(KeelError):
    status_code = 413
    title = "Payload too large"
    type_slug = "payload-too-large"


class UnsupportedMediaType(KeelError):
    """A body in a media type or content encoding the route does not read."""

    status_code = 415
    title = "Unsupported media type"
    type_slug = "unsupported-media-type"


class ValidationFailed(KeelError):
    status_code = 422
    title = "Validation failed"
    type_slug = "validation-failed"

    def __init__(self, detail: str, *, field: str | None = None, errors: list[dict[str, str]] | None = None):
        if errors is None and field is not None:
            errors = [{"field": field, "message": detail}]
        super().__init__(detail, errors=errors)


class TooManyRequests(KeelError):
    """A rate limit is spent (RFC 6585); ``Retry-After`` says when this request would be accepted."""

    status_code = 429
    title = "Too many requests"
    type_slug = "too-many-requests"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class ServiceUnavailable(KeelError):
    """Something the answer depends on is not there: not ready yet (the database is down; retry in
    ``retry_after`` seconds) or not set up here (``retry_after=None``: retrying will not help)."""

    status_code = 503
    title = "Service unavailable"
    type_slug = "service-unavailable"

    def __init__(self, detail: str, *, retry_after: int | None = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)} if retry_after else None)
