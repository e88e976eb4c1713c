"""Signed checkpoints over HTTP: list and sign an org's (owner, admin), and the public JWKS."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit import checkpoints
from api.audit.models import AuditSignedCheckpoint
from api.audit.queries import SeqCursor, decode_seq_cursor, encode_seq_cursor
from api.audit.services import chain_key_of
from api.auth import services as auth
from api.auth.context import Principal
from api.auth.permissions import Permission
from api.deps import PUBLIC
from api.pagination import Limit


class CheckpointOut(msgspec.Struct):
    seq: int
    hash: str
    #: How many entries the chain held when signed (seq minus those pruned before).
    entries: int
    kid: str
    signed_at: datetime
    #: JWS compact serialization (RFC 7515), EdDSA; its payload is {chain, seq, hash, entries, iat}.
    jws: str


class CheckpointPage(msgspec.Struct):
    items: list[CheckpointOut]
    next_cursor: str | None


def checkpoint_out(row: AuditSignedCheckpoint) -> CheckpointOut:
    return CheckpointOut(
        seq=row.seq, hash=row.hash, entries=row.entries, kid=row.kid, signed_at=row.signed_at, jws=row.jws
    )


class OrgAuditCheckpointController(Controller):
    path = "/v1/orgs/{org_id:uuid}/audit-logs/checkpoints"
    tags = ["audit log"]

    @get("/", summary="The organization's signed chain checkpoints, oldest first (owner, admin)")
    async def list_checkpoints(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, cursor: SeqCursor, limit: Limit
    ) -> CheckpointPage:
        await auth.org_access(db, principal, org_id, Permission.read_audit)
        after = decode_seq_cursor(cursor) or 0
        rows = await checkpoints.checkpoints_after(
            db, organization_id=org_id, after_seq=after, limit=limit + 1
        )
        following = encode_seq_cursor(rows[limit - 1].seq) if len(rows) > limit else None
        return CheckpointPage(items=[checkpoint_out(r) for r in rows[:limit]], next_cursor=following)

    @post(
        "/",
        summary="Sign the chain's current head now (owner, admin)",
        description="201 with the new checkpoint; 200 with the existing one when that head is signed "
        "already; 409 when the log has no entry yet.",
    )
    async def sign_now(
        self, org_id: uuid.UUID, db: AsyncSession, principal: Principal, state: State
    ) -> Response[CheckpointOut]:
        # Signing writes only a signature of what is there: reading the log is the right to ask for it,
        # but the issue reserves it to owners and admins, who are exactly the readers of the audit log.
        await auth.org_access(db, principal, org_id, Permission.read_audit)
        row, created = await checkpoints.sign_head(
            db, key=state.audit_signing_key, chain_key=chain_key_of(org_id)
        )
        return Response(checkpoint_out(row), status_code=201 if created else 200)


class AuditKeysController(Controller):
    path = checkpoints.JWKS_PATH
    tags = ["audit log"]

    @get(
        "/",
        opt=PUBLIC,
        summary="The public keys (JWKS, RFC 7517) that verify Keel's signed audit checkpoints",
        description="Every key that ever signed a checkpoint, by `kid`; keys are kept after a rotation.",
    )
    async def keys(self, db: AsyncSession, state: State) -> dict[str, Any]:
        await checkpoints.register_key(db, state.audit_signing_key)
        return await checkpoints.jwks(db)
