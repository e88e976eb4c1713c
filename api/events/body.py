"""Reading a bulk request body within limits: announced, streamed and (for gzip) decompressed."""

from __future__ import annotations

import zlib
from typing import Any

from litestar import Request
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from api.errors import BadRequest, KeelError, PayloadTooLarge


class UnsupportedEncoding(KeelError):
    status_code = 415
    title = "Unsupported media type"


def _mb(limit: int) -> str:
    return f"{limit / (1024 * 1024):g} MB"


async def read_limited_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The request body, decompressed when gzip-encoded, refusing anything larger than ``limit``.

    An announced Content-Length over the limit is refused before reading; a body that grows past
    it while streaming or inflating is refused at that point (a zip bomb is never inflated).
    """
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding not in {"identity", "gzip"}:
        raise UnsupportedEncoding(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            if inflater is None:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the request body is over the {_mb(limit)} limit")
                chunks.append(chunk)
                continue
            data = chunk
            while data:
                try:
                    out = inflater.decompress(data, limit + 1 - size)
                except zlib.error as exc:
                    raise BadRequest(f"the body is not valid gzip ({exc})") from None
                size += len(out)
                if size > limit:
                    raise PayloadTooLarge(f"the decompressed body is over the {_mb(limit)} limit")
                chunks.append(out)
                data = inflater.unconsumed_tail
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"the request body is over the {_mb(limit)} limit") from None
    if inflater is not None and not inflater.eof:
        raise BadRequest("the gzip body is truncated")
    return b"".join(chunks)
