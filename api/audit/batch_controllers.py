"""``POST /v1/audit-logs/batch``: up to 1,000 product entries, each with its own idempotency key."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import State

from api.audit.batch import MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, AuditBatchDoc, AuditBatchResult, ingest_batch
from api.auth.context import Principal, RequestContext
from api.errors import Forbidden
from api.events.body import read_limited_body
from api.events.controllers import INGEST_KEYS


class AuditBatchController(Controller):
    path = "/v1/audit-logs/batch"
    tags = ["audit log"]
    request_max_body_size = MAX_BATCH_BYTES

    @post(
        "/",
        status_code=200,
        summary=f"Record up to {MAX_BATCH_ENTRIES:,} audit entries sent by the product (ingest key)",
        description='`{"entries": [entry, …]}`, each entry as `POST /v1/audit-logs` takes it plus an '
        "optional `idempotency_key`. Valid entries are stored, in order, even when others are "
        "rejected; `results` answers each entry by its index (201 stored, 200 already stored under "
        "its key, or the error's status and reason). More than 1,000 entries, or over 16 MB: 413.",
        opt={"request_body": AuditBatchDoc},
    )
    async def batch(
        self, request: Request[Any, Any, Any], principal: Principal, ctx: RequestContext, state: State
    ) -> AuditBatchResult:
        if principal.kind not in INGEST_KEYS:
            raise Forbidden("audit entries are sent with an org or platform ingest key, not a user token")
        body = await read_limited_body(request, MAX_BATCH_BYTES)
        return await ingest_batch(state.audit_appender, body, principal=principal, request_id=ctx.request_id)
