"""What a JSON request body must be, checked in one place for every route.

Routes with a ``data`` argument get their body through :class:`KeelRequest` (the app's request
class), which decodes it with :func:`decode_json`; the routes that read raw bytes (events, the
Stripe receiver) go through :func:`api.events.body.read_limited_body` and :func:`check_json`
before their own decoders. Either way a malformed body is a precise 400 (or 415), never a 500:

- only JSON media types (``application/json``, ``application/*+json``); the ingest routes also take
  ``text/plain``, which browsers' ``navigator.sendBeacon`` sends to avoid a CORS preflight. A body
  without a ``Content-Type`` is read as JSON. A charset other than UTF-8 is refused.
- only UTF-8: an invalid byte is named with its offset.
- arrays and objects nest at most :data:`MAX_JSON_DEPTH` levels. The decoder recurses once per
  level, so without a limit a few kilobytes of ``[`` exhaust Python's recursion limit.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from typing import Any

import msgspec
from litestar import Request
from litestar.types import Empty

from api.errors import BadRequest, UnsupportedMediaType

#: The deepest nesting of arrays and objects a JSON body may have (documented in docs/api.md).
MAX_JSON_DEPTH = 64

#: Route option: the route also reads a ``text/plain`` body as JSON (``navigator.sendBeacon``).
TEXT_PLAIN_JSON = "text_plain_json"

BODY = "the request body"
TOO_DEEP = f"nests arrays and objects deeper than {MAX_JSON_DEPTH} levels, the limit"
_UTF8 = {"utf-8", "utf8"}
_decode_any = msgspec.json.Decoder()

# A body reduced to its brackets: openers +1, closers -1 (as signed bytes).
_AS_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_MARKS = bytes(b for b in range(256) if b not in b'[]{}"')


def is_json_media_type(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def check_media_type(request: Request[Any, Any, Any]) -> None:
    """Refuse (415) a declared ``Content-Type`` that is not JSON, or ``text/plain`` on a route whose
    ``opt`` sets :data:`TEXT_PLAIN_JSON`."""
    declared = request.headers.get("content-type")
    if declared is None or not declared.strip():
        return
    media_type, options = request.content_type
    text_plain = bool(request.route_handler.opt.get(TEXT_PLAIN_JSON))
    accepted = ["application/json", "text/plain"] if text_plain else ["application/json"]
    if not (is_json_media_type(media_type) or (text_plain and media_type == "text/plain")):
        raise UnsupportedMediaType(
            f"Content-Type {media_type!r} is not accepted here; send JSON as {' or '.join(accepted)}",
            headers={"Accept-Post": ", ".join(accepted)},
        )
    charset = options.get("charset")
    if charset is not None and charset.strip().lower() not in _UTF8:
        raise UnsupportedMediaType(f"charset {charset!r} is not accepted; JSON bodies are UTF-8")


def check_identity_encoding(request: Request[Any, Any, Any]) -> None:
    """Refuse (415, RFC 7694) a ``Content-Encoding`` on a route that reads bodies as they are."""
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted here; send the body uncompressed "
            "(gzip is for the event routes)",
            headers={"Accept-Encoding": "identity"},
        )


def utf8_problem(data: bytes, *, base: int = 0) -> str | None:
    """Why ``data`` is not UTF-8 ("invalid byte 0xFF at byte offset 17: …"), or ``None`` when it is.

    ``base`` is added to the offset, for a slice of a larger body."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"is not valid UTF-8: invalid byte 0x{data[exc.start]:02X} at byte offset "
            f"{base + exc.start} ({exc.reason})"
        )
    return None


def nests_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in ``data`` nest deeper than ``limit``, without parsing it.

    Loops in C only: a body with few brackets is done after two counts; otherwise strings are cut
    out (brackets in them do not nest), the rest becomes +1 per opener and -1 per closer, and the
    deepest point is the largest running sum. Unclosed openers (a truncated body) count too: a
    decoder descends into them before it finds out.

    Cutting strings out: escaped backslashes first, then escaped quotes, so what remains of ``"``
    delimits strings; then only brackets and quotes are kept (a batch of 1,000 entries shrinks
    tenfold). Two quotes side by side enclose, or lie between, text with no bracket: dropping the
    pair leaves every bracket on its side of a string, and leaves few quotes (only around strings
    holding a bracket) to split on.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = unescaped.translate(None, _NOT_MARKS)
    while b'""' in marks:
        marks = marks.replace(b'""', b"")
    if b'"' in marks:
        marks = b"".join(marks.split(b'"')[::2])
    steps = array("b")
    steps.frombytes(marks.translate(_AS_STEPS))
    return len(steps) > limit and max(accumulate(steps)) > limit


def json_problem(data: bytes) -> str | None:
    """Why ``data`` is no JSON a decoder may be given (too deep, or not UTF-8), or ``None``.

    The answer completes a sentence about the body: "the request body " + problem."""
    return TOO_DEEP if nests_too_deep(data) else utf8_problem(data)


def check_json(data: bytes, *, subject: str = BODY) -> None:
    """Raise :class:`BadRequest` when ``data`` nests too deep or is not UTF-8 (syntax is the decoder's)."""
    problem = json_problem(data)
    if problem is not None:
        raise BadRequest(f"{subject} {problem}")


def decode_json(data: bytes, *, subject: str = BODY) -> Any:
    """``data`` as Python values; :class:`BadRequest` naming the problem when it is not JSON."""
    if nests_too_deep(data):
        raise BadRequest(f"{subject} {TOO_DEEP}")
    try:
        return _decode_any.decode(data)
    except (UnicodeDecodeError, msgspec.DecodeError) as exc:
        # An invalid byte outside a string is a syntax error to the decoder: name it as what it is.
        raise BadRequest(f"{subject} {utf8_problem(data) or f'is not valid JSON ({exc})'}") from None


class KeelRequest(Request[Any, Any, Any]):
    """The app's request class: a route's ``data`` is decoded by :func:`decode_json` after the
    media-type and encoding checks, so a malformed body never reaches the handler or a 500."""

    async def json(self) -> Any:
        if self._json is Empty:
            state = self._connection_state
            if state.json is Empty:
                check_media_type(self)
                check_identity_encoding(self)
                state.json = decode_json(await self.body())
            self._json = state.json
        return self._json
