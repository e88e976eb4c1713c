"""Reading a bulk request body within limits (announced, streamed and, for gzip, decompressed), and
decoding a batch's envelope so that each event can be judged on its own."""

from __future__ import annotations

import re
import zlib
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from api.bodies import BODY, check_json, check_media_type, utf8_problem
from api.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from api.events.schemas import BatchIn
from api.schemas import split_validation_message


def _mb(limit: int) -> str:
    return f"{limit / (1024 * 1024):g} MB"


async def read_limited_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The request body, decompressed when gzip-encoded, refusing anything larger than ``limit``.

    The media type must be JSON (or ``text/plain`` where the route allows it; see :mod:`api.bodies`).
    An announced Content-Length over the limit is refused before reading; a body that grows past
    it while streaming or inflating is refused at that point (a zip bomb is never inflated).
    """
    check_media_type(request)
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding not in {"identity", "gzip"}:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; use gzip or none",
            headers={"Accept-Encoding": "gzip, identity"},
        )
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


_decode_envelope = msgspec.json.Decoder(BatchIn)
# What the envelope's structure is made of: strings (skipped whole) and punctuation.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.S)
E = TypeVar("E", bound=msgspec.Struct)


def decode_batch(body: bytes) -> BatchIn:
    """The batch envelope, its events still raw: each is checked on its own
    (:func:`api.events.services.prepare`), so a malformed event is one rejection, not a failed batch."""
    return decode_envelope(body, _decode_envelope, "events")


def decode_envelope(body: bytes, decoder: msgspec.json.Decoder[E], items: str) -> E:
    """A bulk body's envelope, decoded by ``decoder``, with the array ``items`` left raw (a list of
    :class:`msgspec.Raw` in the envelope's type): Keel's batches and Segment's.

    Raw items are skipped by the decoder without checking their UTF-8, but it descends into them:
    one nested past its recursion limit (some 900 levels, in 2 KB) fails the whole decode. Then, and
    when the envelope itself is not UTF-8, the items are cut out of the body by :func:`_event_spans`.
    """
    if not body or body.isspace():
        raise BadRequest(f"{BODY} is empty; send a JSON object with an `{items}` array")
    try:
        return _decode(body, decoder)
    except (RecursionError, UnicodeDecodeError):
        pass
    spans = _event_spans(body, f'"{items}"'.encode())
    if spans is None:  # no items array to cut out: the body as a whole is at fault
        check_json(body)
        raise BadRequest(f"{BODY} is not a JSON object with an `{items}` array")
    opened, closed, events = spans
    head, tail = body[: opened + 1], body[closed:]
    problem = utf8_problem(head) or utf8_problem(tail, base=closed)
    if problem is not None:
        raise BadRequest(f"{BODY} {problem}")
    envelope = head + tail
    check_json(envelope)
    decoded = _decode(envelope, decoder)
    raws = [msgspec.Raw(body[start:end].strip()) for start, end in events]
    return msgspec.structs.replace(decoded, **{items: raws})


def _decode(body: bytes, decoder: msgspec.json.Decoder[E]) -> E:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        field, message = split_validation_message(str(exc))
        raise ValidationFailed(f"{field}: {message}" if field else message, field=field or "body") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"{BODY} {utf8_problem(body) or f'is not valid JSON ({exc})'}") from None


def _event_spans(body: bytes, array_key: bytes) -> tuple[int, int, list[tuple[int, int]]] | None:
    """Where the top-level ``array_key`` array opens and closes, and each element's (start, end).

    A walk over the body's strings and punctuation in Python: used only for the bodies above.
    """
    depth = 0
    last_string: bytes | None = None
    key: bytes | None = None
    opened: int | None = None
    start = 0
    events: list[tuple[int, int]] = []
    for match in _TOKEN.finditer(body):
        token = match.group()[:1]
        if token == b'"':
            last_string = match.group() if depth == 1 else None
        elif token == b":":
            key = last_string if depth == 1 else key
        elif token == b",":
            if opened is not None and depth == 2:
                events.append((start, match.start()))
                start = match.end()
            elif depth == 1:
                key = None
        elif token in (b"[", b"{"):
            depth += 1
            if opened is None and depth == 2 and token == b"[" and key == array_key:
                opened, start = match.start(), match.end()
        else:
            depth -= 1
            if opened is not None and depth == 1:
                if events or body[start : match.start()].strip():
                    events.append((start, match.start()))
                return opened, match.start(), events
    return None
