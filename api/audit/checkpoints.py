"""Signed checkpoints: each chain's head, signed as a JWS (RFC 7515) with EdDSA/Ed25519 (RFC 8037).

A checkpoint's payload is ``{"chain", "seq", "hash", "entries", "iat"}``; its protected header
names the key (``kid``, the key's RFC 7638 thumbprint). Every public key that ever signed is kept in
``audit_signing_keys`` and published as a JWKS (``/.well-known/keel-audit-keys.json``), so rotating
the key (a new ``KEEL_AUDIT_SIGNING_KEY``) keeps older checkpoints verifiable.

A customer who keeps the checkpoints (from the API, an export or a stream) holds hashes that whoever
controls the database cannot re-sign: a rewritten and re-hashed chain no longer contains them.
The private key comes from the settings (never stored in the database, logged or exported).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.audit.models import AuditChainHead, AuditCheckpoint, AuditSignedCheckpoint, AuditSigningKey
from api.audit.services import PLATFORM_CHAIN, chain_key_of
from api.errors import Conflict
from api.settings import Settings, SettingsError

ALGORITHM = "EdDSA"
KEY_FILE_NAME = "audit-signing-key.json"
JWKS_PATH = "/.well-known/keel-audit-keys.json"
#: The seed of the signers' per-chain advisory lock (the appends' lock uses 0 on the same key).
SIGN_LOCK_SEED = 18
log = logging.getLogger("keel.audit")


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: OKPKey
    #: What the JWKS publishes: the public half, with its ``kid``, ``alg`` and ``use``.
    public_jwk: dict[str, Any]

    def __repr__(self) -> str:  # never print the private half
        return f"SigningKey(kid={self.kid!r})"


def _key_from_jwk(raw: str, where: str) -> SigningKey:
    try:
        data = json.loads(raw)
        key = OKPKey.import_key(data)
    except (ValueError, TypeError, KeyError, JoseError) as exc:
        raise SettingsError(f"{where} is not an Ed25519 private JWK ({type(exc).__name__})") from None
    if key.as_dict(private=False).get("crv") != "Ed25519" or not key.is_private:
        raise SettingsError(f"{where} must be an Ed25519 private key (kty OKP, crv Ed25519, with d)")
    kid = key.thumbprint()
    public = {**key.as_dict(private=False), "kid": kid, "alg": ALGORITHM, "use": "sig"}
    return SigningKey(kid=kid, private=key, public_jwk=public)


def generate_key_jwk() -> str:
    """A new Ed25519 private key as JWK text (what ``KEEL_AUDIT_SIGNING_KEY`` or the key file holds)."""
    return json.dumps(OKPKey.generate_key("Ed25519").as_dict(private=True))


def load_signing_key(settings: Settings) -> SigningKey:
    """The key that signs checkpoints: ``KEEL_AUDIT_SIGNING_KEY`` (a private JWK), else the file
    ``KEEL_AUDIT_SIGNING_KEY_FILE``, else ``<data dir>/audit-signing-key.json``, which is generated
    (mode 0600) when missing — the embedded set-up's key. A named file that is missing is an error."""
    if settings.audit_signing_key:
        return _key_from_jwk(settings.audit_signing_key, "KEEL_AUDIT_SIGNING_KEY")
    path = settings.audit_signing_key_file
    if path is not None:
        if not path.is_file():
            raise SettingsError(f"KEEL_AUDIT_SIGNING_KEY_FILE {path} does not exist")
        return _key_from_jwk(path.read_text(), f"KEEL_AUDIT_SIGNING_KEY_FILE ({path})")
    path = settings.data_dir / KEY_FILE_NAME
    if not path.is_file():
        _write_private(path, generate_key_jwk())
    return _key_from_jwk(path.read_text(), str(path))


def _write_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process generated it first: use theirs
        return
    with os.fdopen(fd, "w") as sink:
        sink.write(content)


async def register_key(session: AsyncSession, key: SigningKey) -> None:
    """Publish ``key``'s public half (idempotent); it stays published after the next rotation."""
    await session.execute(
        pg_insert(AuditSigningKey)
        .values(kid=key.kid, public_jwk=key.public_jwk)
        .on_conflict_do_nothing(index_elements=["kid"])
    )


async def jwks(session: AsyncSession) -> dict[str, Any]:
    """Every public key that signed (or signs) checkpoints, oldest first: ``{"keys": [JWK, …]}``."""
    rows = await session.scalars(select(AuditSigningKey).order_by(AuditSigningKey.created_at))
    return {"keys": [row.public_jwk for row in rows]}


def sign_payload(key: SigningKey, payload: dict[str, Any]) -> str:
    """The JWS compact serialization of ``payload`` (compact JSON), signed with ``key``."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    with warnings.catch_warnings():
        # joserfc prefers RFC 9864's fully-specified "Ed25519" name; "EdDSA" (RFC 8037) is the same
        # signature and the one every JOSE library verifies today.
        warnings.simplefilter("ignore")
        return jws.serialize_compact(
            {"alg": ALGORITHM, "kid": key.kid, "typ": "keel-audit-checkpoint+jws"},
            body,
            key.private,
            algorithms=[ALGORITHM],
        )


async def sign_head(
    session: AsyncSession, *, key: SigningKey, chain_key: str, now: datetime | None = None
) -> tuple[AuditSignedCheckpoint, bool]:
    """Sign ``chain_key``'s current head; ``(checkpoint, True)`` when new, ``(existing, False)`` when
    that head was signed already. Conflict when the chain has no entry yet. Takes no chain lock:
    appends go on while a head is signed (the checkpoint names the head that was read).

    Signers of one chain take turns (a transaction-scoped advisory lock, not the appends' lock), so a
    chain's checkpoints commit in seq order: a stream that has sent the checkpoint at seq N has seen
    every one below it (``delivered_checkpoint_seq`` never skips one signed concurrently)."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(chain_key, SIGN_LOCK_SEED)))
    )
    head = (
        await session.execute(
            select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.chain_key == chain_key)
        )
    ).one_or_none()
    if head is None:
        raise Conflict("the audit log has no entry yet: there is no head to sign")
    seq, digest = int(head[0]), str(head[1])
    existing = await session.get(AuditSignedCheckpoint, (chain_key, seq))
    if existing is not None:
        return existing, False
    pruned_through = await session.scalar(
        select(func.coalesce(func.max(AuditCheckpoint.seq), 0)).where(AuditCheckpoint.chain_key == chain_key)
    )
    when = (now or datetime.now(UTC)).astimezone(UTC)
    payload = {
        "chain": chain_key,
        "seq": seq,
        "hash": digest,
        "entries": seq - int(pruned_through or 0),
        "iat": int(when.timestamp()),
    }
    await register_key(session, key)
    organization_id = None if chain_key == PLATFORM_CHAIN else uuid.UUID(chain_key)
    try:
        async with session.begin_nested():
            inserted = await session.scalar(
                pg_insert(AuditSignedCheckpoint)
                .values(
                    chain_key=chain_key,
                    seq=seq,
                    organization_id=organization_id,
                    hash=digest,
                    entries=payload["entries"],
                    kid=key.kid,
                    jws=sign_payload(key, payload),
                    signed_at=when,
                )
                .on_conflict_do_nothing(index_elements=["chain_key", "seq"])
                .returning(AuditSignedCheckpoint)
            )
    except IntegrityError:
        # The database refuses to sign a head that is not an entry of its chain: it was tampered with.
        raise Conflict(
            "the chain's recorded head does not match its entries, so it cannot be signed; "
            "GET …/audit-logs/verify names the first broken entry"
        ) from None
    if inserted is not None:
        return inserted, True
    # Signed by a concurrent caller between our read and our insert.
    concurrent = await session.get(AuditSignedCheckpoint, (chain_key, seq))
    assert concurrent is not None
    return concurrent, False


async def sign_moved_heads(session: AsyncSession, *, key: SigningKey) -> list[AuditSignedCheckpoint]:
    """Sign every chain whose head moved since its newest signed checkpoint (the hourly run)."""
    moved = await session.scalars(
        text(
            "SELECT h.chain_key FROM audit_chain_heads h WHERE h.seq > COALESCE("
            "(SELECT max(c.seq) FROM audit_signed_checkpoints c WHERE c.chain_key = h.chain_key), 0)"
            " ORDER BY h.chain_key"
        )
    )
    signed = []
    for chain_key in list(moved):
        try:
            checkpoint, _ = await sign_head(session, key=key, chain_key=chain_key)
        except Conflict as exc:  # one broken chain must not keep the others unsigned
            log.error("audit chain %s not signed: %s", chain_key, exc.detail)
            continue
        signed.append(checkpoint)
    return signed


async def checkpoints_after(
    session: AsyncSession,
    *,
    organization_id: uuid.UUID | None,
    after_seq: int = 0,
    limit: int = 100,
    through_seq: int | None = None,
) -> list[AuditSignedCheckpoint]:
    """An organization's signed checkpoints past ``after_seq`` (and up to ``through_seq`` when given),
    oldest first (at most ``limit``).

    What the API lists, exports include and streams push (``organization_id=None``: the platform chain).
    """
    where = [
        AuditSignedCheckpoint.chain_key == chain_key_of(organization_id),
        AuditSignedCheckpoint.seq > after_seq,
    ]
    if through_seq is not None:
        where.append(AuditSignedCheckpoint.seq <= through_seq)
    rows = await session.scalars(
        select(AuditSignedCheckpoint).where(*where).order_by(AuditSignedCheckpoint.seq).limit(limit)
    )
    return list(rows)
