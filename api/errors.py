"""One error tree. Services raise these; one handler turns them into ``application/problem+json``."""

from __future__ import annotations

import math

#: Every problem document's ``type`` is this base followed by the slug of its title.
PROBLEM_TYPE_BASE = "https://keel.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class KeelError(Exception):
    """A domain error with its HTTP status and a human ``detail`` (the problem document's title
    and type follow from the status: api/problems.py)."""

    status_code = 400

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class BadRequest(KeelError):
    pass


class Unauthorized(KeelError):
    status_code = 401


class Forbidden(KeelError):
    status_code = 403


class NotFound(KeelError):
    status_code = 404


class Conflict(KeelError):
    status_code = 409


class PayloadTooLarge(KeelError):
    status_code = 413


class UnsupportedMediaType(KeelError):
    """A body in a media type or content encoding the route does not read."""

    status_code = 415


class ValidationFailed(KeelError):
    status_code = 422

    def __init__(self, detail: str, *, field: str | None = None, errors: list[dict[str, str]] | None = None):
        if errors is None and field is not None:
            errors = [{"field": field, "message": detail}]
        super().__init__(detail, errors=errors)


class TooManyRequests(KeelError):
    """A rate limit is spent (RFC 6585); ``Retry-After`` says when this request would be accepted."""

    status_code = 429

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class ServiceUnavailable(KeelError):
    """Something the answer depends on is not there: not ready yet (the database is down; retry in
    ``retry_after`` seconds) or not set up here (``retry_after=None``: retrying will not help)."""

    status_code = 503

    def __init__(self, detail: str, *, retry_after: int | None = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)} if retry_after else None)
