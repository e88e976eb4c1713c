"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``.

Kept free of I/O so the worker, the API and a customer's own check share one definition.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # within Standard Webhooks' 24-64


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` item of the ``webhook-signature`` header."""
    mac = hmac.new(key, b"%s.%d." % (message_id.encode(), timestamp) + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(keys: list[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """Every key's signature, space-separated: during a rotation a receiver may hold either secret."""
    return " ".join(sign(key, message_id, timestamp, body) for key in keys)
