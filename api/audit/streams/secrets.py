"""Audit stream credentials at rest: AES-256-GCM under one key, never stored or logged in clear.

The key is ``KEEL_AUDIT_STREAM_KEY`` (32 random bytes, base64), or else a key file generated once
in the data dir (``audit-stream.key``, mode 0600) — what an embedded or single-node Keel uses.
Several nodes must share the setting. Each value is sealed with a fresh 96-bit nonce and the
stream's id as associated data, so a ciphertext copied onto another stream does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from api.settings import Settings, SettingsError

KEY_FILE = "audit-stream.key"
NONCE_BYTES = 12
VERSION = b"\x01"


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{where} must be 32 bytes in base64") from None
    if len(key) != 32:
        raise SettingsError(f"{where} must be 32 bytes in base64, not {len(key)} bytes")
    return key


def stream_key(settings: Settings) -> bytes:
    """The key, from the setting or the data dir's key file (created on first use)."""
    if settings.audit_stream_key:
        return _decode_key(settings.audit_stream_key, "KEEL_AUDIT_STREAM_KEY")
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = base64.b64encode(secrets.token_bytes(32)).decode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(text + "\n")
    return _decode_key(path.read_text(), str(path))


class Sealer:
    """Seals and opens one stream's credentials."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def of(cls, settings: Settings) -> Sealer:
        return cls(stream_key(settings))

    def seal(self, stream_id: uuid.UUID, value: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, value.encode(), stream_id.bytes)

    def open(self, stream_id: uuid.UUID, sealed: bytes) -> str:
        if sealed[:1] != VERSION:
            raise ValueError("unknown sealed-value version")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, stream_id.bytes).decode()
        except InvalidTag:
            raise ValueError("the stream's credential does not open with this key") from None
