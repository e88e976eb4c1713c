"""The wire protocols of audit stream destinations: one request per batch of items.

- ``https``: JSON lines POSTed to the URL, signed as Keel's webhooks are (Standard Webhooks
  ``webhook-id``/``webhook-timestamp``/``webhook-signature``; the id names the stream and the seq
  range, so a receiver can drop a retried batch it already has); an optional token goes in
  ``Authorization: Bearer``.
- ``splunk_hec``: ``POST {url}/services/collector/event``, ``Authorization: Splunk <token>``, one
  ``{"time", "host", "source", "sourcetype", "event"}`` object per item, concatenated (HEC's batch form).
- ``datadog``: ``POST {url}/api/v2/logs``, ``DD-API-KEY``, a JSON array of logs with ``ddsource``,
  ``service``, ``ddtags``, ``hostname`` and the item as ``message`` (Datadog parses JSON messages).
- ``s3``: ``PUT`` of one gzip'd JSON lines object per delivery window, AWS Signature V4 (the token
  is ``ACCESS_KEY_ID:SECRET_ACCESS_KEY``; the URL ``https://host/bucket[/prefix][?region=r]``,
  path-style, so any S3-compatible store works). Objects are named
  ``{prefix}/{org}/{first seq:020}-{last seq:020}.jsonl.gz``: a listing in name order is seq order.
  A batch that ends with a signed checkpoint ends its name (and an https batch its ``webhook-id``)
  with ``c`` (``…-{last seq:020}c.jsonl.gz``, after the object that ends with that seq's entry): the
  entry at a seq and the checkpoint of that seq can travel in two batches, and neither overwrites
  (or dedupes away) the other.

Every request goes out through the webhooks' guarded transport (:mod:`api.webhooks.ssrf`): the
same address checks at every connection, and no redirects.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote, urlsplit

import msgspec

from api.audit.streams.formats import StreamItem, render
from api.audit.streams.models import StreamFormat, StreamType
from api.webhooks import signing

USER_AGENT = "Keel-Audit-Streams/1.0"
HEC_PATH = "/services/collector/event"
DATADOG_PATH = "/api/v2/logs"
DEFAULT_S3_REGION = "us-east-1"
#: Items per request, and bytes per request before compression: within Datadog's 1,000 logs and
#: 5 MB, and HEC's default 1 MB... per event, with room.
MAX_ITEMS = 500
MAX_BYTES = 4_000_000


@dataclass(frozen=True, slots=True)
class Target:
    """A stream as the sender needs it, credentials opened."""

    stream_id: uuid.UUID
    organization_id: uuid.UUID
    type: StreamType
    url: str
    format: StreamFormat
    token: str | None
    secret: str | None


@dataclass(frozen=True, slots=True)
class Prepared:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    #: How many of the items given it carries (the rest wait for the next request).
    count: int


_encode = msgspec.json.Encoder(decimal_format="number").encode


def _dumps(value: object) -> bytes:
    """Compact JSON (msgspec: the serializer is most of a batch's CPU time)."""
    return _encode(value)


def _take(lines: list[bytes]) -> int:
    """How many leading lines fit one request."""
    total = 0
    for n, line in enumerate(lines):
        total += len(line) + 1
        if n and (n >= MAX_ITEMS or total > MAX_BYTES):
            return n
    return len(lines)


def _join(base: str, path: str) -> str:
    parts = urlsplit(base)
    if parts.path.rstrip("/").endswith(path):
        return base
    return base.rstrip("/") + path


def prepare(target: Target, items: list[StreamItem], *, now: float | None = None) -> Prepared:
    """The request that delivers the first items of ``items`` (at least one)."""
    assert items, "nothing to send"
    now = time.time() if now is None else now
    org = str(target.organization_id)
    headers = {"user-agent": USER_AGENT}
    if target.type is StreamType.splunk_hec:
        sourcetype = "ocsf" if target.format is StreamFormat.ocsf else "keel:audit"
        lines = [
            _dumps(
                {
                    "time": round(item.time.timestamp(), 6),
                    "host": "keel",
                    "source": f"keel:audit:{org}",
                    "sourcetype": sourcetype,
                    "event": render(target.format, item),
                }
            )
            for item in items
        ]
        n = _take(lines)
        headers |= {"authorization": f"Splunk {target.token}", "content-type": "application/json"}
        return Prepared("POST", _join(target.url, HEC_PATH), headers, b"\n".join(lines[:n]), n)
    if target.type is StreamType.datadog:
        tags = f"org_id:{org},format:{target.format.value},source:keel"
        logs = [
            _dumps(
                {
                    "ddsource": "keel",
                    "service": "keel-audit",
                    "hostname": "keel",
                    "ddtags": tags,
                    "message": _dumps(render(target.format, item)).decode(),
                }
            )
            for item in items
        ]
        n = _take(logs)
        headers |= {"dd-api-key": target.token or "", "content-type": "application/json"}
        return Prepared(
            "POST", _join(target.url, DATADOG_PATH), headers, b"[" + b",".join(logs[:n]) + b"]", n
        )
    lines = [_dumps(render(target.format, item)) for item in items]
    n = _take(lines)
    body = b"\n".join(lines[:n]) + b"\n"
    first, last = items[0].seq, items[n - 1].seq
    tail = "c" if items[n - 1].kind == "checkpoint" else ""
    if target.type is StreamType.https:
        webhook_id = f"auds_{target.stream_id.hex}_{first}_{last}{tail}"
        stamp = int(now)
        assert target.secret is not None
        headers |= {
            "content-type": "application/x-ndjson",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signing.signature_header(
                [signing.secret_key(target.secret)], webhook_id, stamp, body
            ),
        }
        if target.token:
            headers["authorization"] = f"Bearer {target.token}"
        return Prepared("POST", target.url, headers, body, n)
    return _s3_put(target, gzip.compress(body, mtime=0), (first, last, tail), now, headers, n)


def s3_location(url: str) -> tuple[str, str, str, str]:
    """``(endpoint, bucket, prefix, region)`` of an ``s3`` stream URL."""
    parts = urlsplit(url)
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    region = parse_qs(parts.query).get("region", [""])[0]
    if not region:
        host = parts.hostname or ""
        labels = host.split(".")
        # s3.<region>.amazonaws.com and <bucket>.s3.<region>.amazonaws.com name their region.
        region = labels[-3] if host.endswith(".amazonaws.com") and len(labels) >= 4 else DEFAULT_S3_REGION
    return f"{parts.scheme}://{parts.netloc}", bucket, prefix.strip("/"), region


def object_key(prefix: str, organization_id: uuid.UUID, first: int, last: int, tail: str = "") -> str:
    """``tail`` is ``c`` when the object ends with a checkpoint."""
    name = f"{organization_id}/{first:020d}-{last:020d}{tail}.jsonl.gz"
    return f"{prefix}/{name}" if prefix else name


def _s3_put(
    target: Target,
    payload: bytes,
    span: tuple[int, int, str],
    now: float,
    headers: dict[str, str],
    n: int,
) -> Prepared:
    endpoint, bucket, prefix, region = s3_location(target.url)
    key_id, _, secret = (target.token or "").partition(":")
    path = "/" + quote(bucket, safe="") + "/" + quote(object_key(prefix, target.organization_id, *span))
    host = urlsplit(endpoint).netloc
    stamp = datetime.fromtimestamp(now, UTC)
    amz_date, day = stamp.strftime("%Y%m%dT%H%M%SZ"), stamp.strftime("%Y%m%d")
    digest = hashlib.sha256(payload).hexdigest()
    signed = {
        "content-type": "application/gzip",
        "host": host,
        "x-amz-content-sha256": digest,
        "x-amz-date": amz_date,
    }
    names = ";".join(sorted(signed))
    canonical = "\n".join(["PUT", path, "", *(f"{k}:{signed[k]}" for k in sorted(signed)), "", names, digest])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers |= {k: v for k, v in signed.items() if k != "host"}
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    return Prepared("PUT", endpoint + path, headers, payload, n)


def succeeded(target: Target, status: int) -> bool:
    """Whether the destination took the batch (HEC answers 200, Datadog 202, S3 200)."""
    return 200 <= status < 300
