"""Token secrets: generated once, shown once, stored only as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets

from api.tokens.models import TokenKind

# The visible part says what a token is, so a leaked one is recognizable (and scannable) at a glance.
KIND_PREFIX = {
    TokenKind.user: "keel_ut_",
    TokenKind.org_ingest: "keel_ik_",
    TokenKind.platform_ingest: "keel_pk_",
}
#: Publishable keys (org or platform): meant to be read in a web page, and recognizable as such.
PUBLISHABLE_PREFIX = "keel_pub_"
VISIBLE_CHARS = 6


def digest(secret: str) -> bytes:
    """Tokens carry 256 random bits, so a fast hash is enough: there is nothing to brute-force."""
    return hashlib.sha256(secret.encode()).digest()


def generate(kind: TokenKind, *, publishable: bool = False) -> tuple[str, str, bytes]:
    """Return ``(secret, visible_prefix, digest)`` for a new token of ``kind``."""
    prefix = PUBLISHABLE_PREFIX if publishable else KIND_PREFIX[kind]
    secret = prefix + secrets.token_urlsafe(32)
    return secret, secret[: len(prefix) + VISIBLE_CHARS], digest(secret)
