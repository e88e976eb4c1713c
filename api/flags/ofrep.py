"""The OpenFeature Remote Evaluation Protocol (OFREP, github.com/open-feature/protocol): any
OpenFeature SDK's OFREP provider evaluates Keel flags with no Keel code.

``POST /ofrep/v1/evaluate/flags/{key}`` and ``POST /ofrep/v1/evaluate/flags`` (bulk) take
``{"context": {"targetingKey": …, …}}``. ``targetingKey`` is the end user's id; every other
attribute is a ``context.<name>`` field for rules. The org: an org ingest key's own; a platform
key or member token names it in the context (``org_id``, or ``groupId`` matched by Keel id or
``external_id``; ``?org_id=`` also works, as for ``/v1/flags/evaluate``). An org the credential may
not use answers exactly as one that does not exist (403). Answers come from the process's flag
snapshot, as ``/v1/flags/evaluate``'s do.

OFREP's shapes, not problem+json, for what OFREP defines: success ``{key, value, reason, variant,
metadata}``; failure ``{key, errorCode, errorDetails}`` (``FLAG_NOT_FOUND`` 404,
``TARGETING_KEY_MISSING``, ``INVALID_CONTEXT``, ``PARSE_ERROR`` 400). Authentication (401) and
a credential that may not evaluate for the org named (403) stay Keel's problem documents, with
the statuses OFREP specifies. A flag with variants that is off carries no ``value``: the SDK uses
the code's default (OFREP ADR-0006).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.params import Parameter
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send
from sqlalchemy import or_, select

from api.auth import services as auth
from api.auth.context import Principal
from api.auth.permissions import Permission
from api.bodies import decode_json
from api.deps import provide_principal
from api.errors import BadRequest, Forbidden, NotFound
from api.events.body import read_limited_body
from api.flags.evaluation import Evaluation, FlagDefinition, Reason
from api.flags.schemas import KEY_PATTERN
from api.flags.store import FlagStore, canonical_org_id
from api.openapi import OWN_RESPONSES
from api.orgs.live import LIVE
from api.orgs.models import Organization, OrgStatus
from api.tokens.models import TokenKind

_encode = msgspec.json.Encoder()
JSON = "application/json"
JSON_BYTES = JSON.encode()
#: Context attributes that name the organization rather than describe the caller.
ORG_ATTRIBUTES = ("org_id", "groupId")

#: Bulk answers kept per process (``FlagStore.bulk_answers``) before the cache starts over.
BULK_CACHE_SIZE = 10_000

PathKey = Annotated[str, Parameter(pattern=KEY_PATTERN, max_length=100, description="The flag's key.")]


class OfrepRequest(msgspec.Struct):
    """``context``: ``targetingKey`` (the user id), ``org_id`` or ``groupId``, and any attribute."""

    context: dict[str, Any] = {}


class OfrepEvaluation(msgspec.Struct, omit_defaults=True):
    key: str
    reason: str
    variant: str
    metadata: dict[str, Any]
    #: Absent for a flag with variants that is off: the SDK uses the code's default.
    value: Any = None


class OfrepFailure(msgspec.Struct, omit_defaults=True):
    """OFREP's failure shape (its camelCase field names)."""

    errorCode: str
    errorDetails: str
    key: str | None = None


class OfrepBulk(msgspec.Struct):
    flags: list[dict[str, Any]]
    metadata: dict[str, Any]


SINGLE_ANSWERS = {
    200: ("The flag's evaluation.", OfrepEvaluation),
    400: ("PARSE_ERROR, INVALID_CONTEXT or TARGETING_KEY_MISSING (OFREP).", OfrepFailure),
    404: ("FLAG_NOT_FOUND (OFREP).", OfrepFailure),
}
BULK_ANSWERS = {
    200: ("Every flag's evaluation (or its error), with an ETag.", OfrepBulk),
    304: ("Nothing changed since the ETag sent in If-None-Match.", None),
    400: ("PARSE_ERROR or INVALID_CONTEXT (OFREP).", OfrepFailure),
}


class Sent(ASGIResponse):
    """An answer whose status, header lines and body are made: sent as they are.

    Cheaper than a Litestar ``Response`` (no header object, no encoding step per request); the
    middlewares around add their headers to a copy of the list, as for any answer.
    """

    __slots__ = ("_lines",)

    def __init__(self, status: int, body: bytes, lines: list[tuple[bytes, bytes]]) -> None:
        # No super().__init__(): nothing of its header machinery is used, __call__ is this class's.
        self.status_code, self.body, self._lines = status, body, lines

    @classmethod
    def json(cls, status: int, body: bytes, lines: list[tuple[bytes, bytes]] | None = None) -> Sent:
        length = str(len(body)).encode()
        return cls(status, body, [*(lines or ()), (b"content-type", JSON_BYTES), (b"content-length", length)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": list(self._lines)})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class BulkAnswer:
    """A bulk answer made once per (snapshot version, org facts, context), kept in
    ``FlagStore.bulk_answers``: the 200 and the 304 for its ETag are made with it, so a poll that
    hits the cache only sends one (``bench/bench_flags.py`` has the profile that asked for it)."""

    __slots__ = ("etag", "not_modified", "ok")

    def __init__(self, body: bytes) -> None:
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        lines = [(b"etag", self.etag.encode()), (b"cache-control", b"no-cache")]
        self.ok = Sent.json(200, body, lines)
        self.not_modified = Sent(304, b"", lines)  # no body: no content type or length either

    def matches(self, if_none_match: str) -> bool:
        """Whether ``If-None-Match`` names this answer's ETag (one of a comma-separated list)."""
        return self.etag in {m.strip() for m in if_none_match.split(",")}


class OfrepError(Exception):
    def __init__(self, status: int, code: str, details: str, key: str | None = None) -> None:
        super().__init__(details)
        self.status, self.code, self.details, self.key = status, code, details, key

    def response(self) -> Sent:
        body: dict[str, Any] = {"errorCode": self.code, "errorDetails": self.details}
        if self.key is not None:
            body = {"key": self.key, **body}
        return Sent.json(self.status, _encode.encode(body))


def _context_of(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OfrepError(400, "PARSE_ERROR", 'the request body must be a JSON object: {"context": {…}}')
    context = body.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise OfrepError(400, "INVALID_CONTEXT", "context must be a JSON object")
    key = context.get("targetingKey")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        raise OfrepError(400, "INVALID_CONTEXT", "context.targetingKey must be a string of 1-255 characters")
    for name in ORG_ATTRIBUTES:
        value = context.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise OfrepError(400, "INVALID_CONTEXT", f"context.{name} must be a non-empty string")
    return context


#: An evaluation context is small; a body over this is a 413 before it is read whole.
MAX_CONTEXT_BYTES = 64 * 1024


async def _read_context(request: Request[Any, Any, Any]) -> dict[str, Any]:
    try:
        raw = await read_limited_body(request, MAX_CONTEXT_BYTES)  # the media type, gzip, the size
        body = decode_json(raw) if raw.strip() else {}
    except BadRequest as exc:
        raise OfrepError(400, "PARSE_ERROR", exc.detail) from None
    return _context_of(body)


async def _org_named(request: Request[Any, Any, Any], named: str) -> uuid.UUID | None:
    """The live org whose Keel id or ``external_id`` is ``named``, if there is one."""
    try:
        as_id: uuid.UUID | None = uuid.UUID(named)
    except ValueError:
        as_id = None
    clause = Organization.external_id == named
    if as_id is not None:
        clause = or_(Organization.id == as_id, clause)
    async with request.app.state.sessionmaker() as session:
        return await session.scalar(select(Organization.id).where(clause, LIVE).limit(1))


#: One answer for an org the credential may not use and for one that does not exist (no hint).
NOT_YOURS = "this credential may not evaluate flags for that organization"


async def _org_for(request: Request[Any, Any, Any], principal: Principal, context: dict[str, Any]) -> str:
    """The org to evaluate for: named by ``context.org_id``, ``context.groupId`` or ``?org_id=``."""
    named = context.get("org_id") or context.get("groupId")
    if named is None and request.scope.get("query_string"):  # most calls have none: skip the parse
        named = request.query_params.get("org_id")
    if principal.kind is TokenKind.org_ingest:
        assert principal.organization_id is not None
        if named is not None and await _org_named(request, named) != principal.organization_id:
            raise Forbidden(NOT_YOURS)
        return canonical_org_id(principal.organization_id)
    if named is None:
        raise OfrepError(
            400,
            "INVALID_CONTEXT",
            "this credential must name the organization: context.org_id or context.groupId",
        )
    org_id = await _org_named(request, named)
    if principal.kind is TokenKind.platform_ingest:
        if org_id is None:  # a platform key sees every org: saying so leaks nothing
            raise OfrepError(400, "INVALID_CONTEXT", f"no organization with the id or external id {named!r}")
        async with request.app.state.sessionmaker() as session:
            status = await session.scalar(select(Organization.status).where(Organization.id == org_id))
        if status is OrgStatus.suspended:
            raise Forbidden("this organization is suspended")
        return canonical_org_id(org_id)
    if org_id is None:
        raise Forbidden(NOT_YOURS)
    try:
        await auth.org_access_cached(request.app.state.sessionmaker, principal, org_id, Permission.read_org)
    except NotFound:
        raise Forbidden(NOT_YOURS) from None
    return canonical_org_id(org_id)


def _reason(flag: FlagDefinition, r: Evaluation) -> str:
    if r.reason in (Reason.archived, Reason.kill_switch):
        return "DISABLED"
    if r.variant is not None and r.variant_bucket is not None:
        return "SPLIT"
    if r.reason in (Reason.override, Reason.rule):
        return "TARGETING_MATCH"
    if not flag.rules and flag.rollout_percentage in (0, 100):
        return "STATIC"
    return "SPLIT" if r.enabled else "DEFAULT"


def answer(flag: FlagDefinition, r: Evaluation) -> dict[str, Any]:
    """One flag's OFREP evaluation (success), or its error item (``TARGETING_KEY_MISSING``)."""
    if r.reason is Reason.missing_user_id:
        return {
            "key": r.key, "errorCode": "TARGETING_KEY_MISSING",
            "errorDetails": "the flag is sticky by user: send context.targetingKey",
        }  # fmt: skip
    metadata: dict[str, Any] = {"keel_reason": r.reason.value}
    if r.rule is not None:
        metadata["rule"] = r.rule
    if r.bucket is not None:
        metadata["bucket"] = r.bucket
    out: dict[str, Any] = {"key": r.key, "reason": _reason(flag, r)}
    if flag.variants:
        if r.enabled and r.variant is not None:
            out["value"], out["variant"] = r.value, r.variant
        else:
            out["variant"] = "disabled"  # no value: the code default (OFREP ADR-0006)
    else:
        out["value"], out["variant"] = r.enabled, "on" if r.enabled else "off"
    out["metadata"] = metadata
    return out


class OfrepController(Controller):
    """OFREP core: single and bulk evaluation (org ingest key, platform key or member token)."""

    path = "/ofrep/v1/evaluate/flags"
    #: Browsers call these routes (CORS), publishable keys reach them.
    opt = auth.BROWSER_ROUTE
    tags = ["ofrep"]

    async def _prepare(
        self, request: Request[Any, Any, Any], principal: Principal
    ) -> tuple[FlagStore, Any, str, Any]:
        context = await _read_context(request)
        org = await _org_for(request, principal, context)
        store: FlagStore = request.app.state.flags
        user_id = context.get("targetingKey")
        attributes = {k: v for k, v in context.items() if k != "targetingKey"}
        facts = await store.facts(org, user_id=user_id, context=attributes)
        return store, facts, org, user_id

    @post(
        "/{key:str}",
        status_code=200,
        summary="OFREP: evaluate one flag",
        opt={"request_body": OfrepRequest, OWN_RESPONSES: SINGLE_ANSWERS},
        description="OpenFeature Remote Evaluation Protocol, single flag (server-side providers).",
    )
    async def evaluate_one(
        self, key: PathKey, request: Request[Any, Any, Any], principal: Principal
    ) -> ASGIResponse:
        try:
            store, facts, org, user_id = await self._prepare(request, principal)
            snapshot = store.snapshot
            flag = snapshot.flags.get(key)
            result = snapshot.evaluate(key, org_id=org, user_id=user_id, facts=facts)
            if flag is None or result is None:
                raise OfrepError(404, "FLAG_NOT_FOUND", f"no flag with the key {key!r}", key)
            store.mark_evaluated([key])
            body = answer(flag, result)
            if "errorCode" in body:
                raise OfrepError(400, body["errorCode"], body["errorDetails"], key)
        except OfrepError as exc:
            if exc.key is None:
                exc.key = key
            return exc.response()
        return Sent.json(200, _encode.encode(body))

    @post(
        "/",
        status_code=200,
        summary="OFREP: evaluate every flag (ETag; 304 on If-None-Match)",
        opt={"request_body": OfrepRequest, OWN_RESPONSES: BULK_ANSWERS},
        description="OpenFeature Remote Evaluation Protocol, bulk (client-side providers poll it).",
        response_description="Every flag's evaluation",
    )
    async def evaluate_all(self, request: Request[Any, Any, Any]) -> ASGIResponse:
        # The principal straight from the request's state (what the `principal` dependency gives):
        # a route with no dependency skips Litestar's dependency resolution on the polled path.
        principal = provide_principal(request)
        try:
            store, facts, org, user_id = await self._prepare(request, principal)
        except OfrepError as exc:
            return exc.response()
        snapshot = store.snapshot
        store.mark_evaluated()
        # Clients poll the bulk endpoint with the same context: the answer is a function of the
        # snapshot's version, the org's facts and that context, so it is made once per change.
        # (Not when a rule compares the time of evaluation: its answer changes with the clock.)
        cache_key = _encode.encode((snapshot.version, org, user_id, facts.org, facts.traits, facts.context))
        cache = store.bulk_answers if not snapshot.reads_the_clock else {}
        cached = cache.get(cache_key)
        if cached is None:
            results = snapshot.evaluate_all(org_id=org, user_id=user_id, facts=facts)
            flags = snapshot.flags
            body = _encode.encode(
                {
                    "flags": [answer(flags[r.key], r) for r in results if not flags[r.key].archived],
                    "metadata": {"version": snapshot.version},
                }
            )
            cached = BulkAnswer(body)
            if len(cache) >= BULK_CACHE_SIZE:
                cache.clear()
            cache[cache_key] = cached
        match = request.headers.get("if-none-match")
        if match is not None and cached.matches(match):
            return cached.not_modified
        return cached.ok
