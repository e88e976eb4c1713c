"""One delivery attempt: sign, POST, keep the first 4 KB of the answer, or name the error."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from api.webhooks import signing, ssrf

MAX_BODY = 4096
MAX_HEADERS = 64
MAX_HEADER_VALUE = 1024
USER_AGENT = "Keel-Webhooks/1.0"


@dataclass(slots=True)
class Job:
    """A claimed delivery, with everything needed to attempt it."""

    delivery_id: uuid.UUID
    organization_id: uuid.UUID
    endpoint_id: uuid.UUID
    attempt_number: int
    url: str
    secrets: list[str]
    webhook_id: str
    body: bytes


@dataclass(slots=True)
class Outcome:
    job: Job
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    headers: dict[str, str] | None = None
    body: str | None = None
    error_class: str | None = None
    error_detail: str | None = None
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.error_class is None and self.status_code is not None and 200 <= self.status_code < 300

    @property
    def summary(self) -> str:
        if self.error_class:
            return f"{self.error_class}: {self.error_detail or ''}"[:500]
        return f"HTTP {self.status_code}"


def _clean(text: str) -> str:
    # Postgres text and JSONB cannot hold NUL.
    return text.replace("\x00", "\ufffd")


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def classify(exc: BaseException) -> tuple[str, str]:
    """The error class of a failed attempt (timeout, dns, tls, refused, ssrf_blocked, ...)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, ssrf.TargetRefused):
        return "ssrf_blocked", detail
    if isinstance(exc, ssrf.DnsFailure):
        return "dns", detail
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return "timeout", detail or "no answer in time"
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return "invalid_url", detail
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(e, ssrf.TlsFailure | ssl.SSLError) for e in chain):
        return "tls", detail
    if any(isinstance(e, ssrf.ConnectRefused | ConnectionRefusedError) for e in chain):
        return "refused", detail
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "protocol", detail
    return "connection", detail


async def attempt(
    transport: httpx.AsyncBaseTransport,
    url: httpx.URL,
    job: Job,
    keys: list[bytes],
    *,
    within: float,
    timeouts: dict[str, float | None] | None = None,
) -> Outcome:
    """POST the signed body once. Success is a 2xx answered within ``within`` seconds, all told."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        # Compressed answers are not inflated here: only the first 4 KB of raw bytes are kept.
        "accept-encoding": "identity",
        "webhook-id": job.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(keys, job.webhook_id, timestamp, job.body),
    }
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    outcome = Outcome(job=job, started_at=started_at, duration_ms=0)
    try:
        async with asyncio.timeout(within):
            request = httpx.Request("POST", url, content=job.body, headers=headers)
            if timeouts:
                request.extensions["timeout"] = timeouts
            response = await transport.handle_async_request(request)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_raw():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= MAX_BODY:
                        break
            finally:
                await response.aclose()
        outcome.status_code = response.status_code
        outcome.body = _clean(b"".join(chunks)[:MAX_BODY].decode("utf-8", "replace"))
        collected: dict[str, str] = {}
        # Raw bytes, decoded once here: httpx's own header accessors re-detect encodings per call.
        for raw_name, raw_value in response.headers.raw[:MAX_HEADERS]:
            name = raw_name.decode("latin-1").lower()
            value = _clean(raw_value[:MAX_HEADER_VALUE].decode("latin-1"))
            collected[name] = f"{collected[name]}, {value}" if name in collected else value
        outcome.headers = collected
        if response.status_code in (429, 503):
            outcome.retry_after = retry_after_seconds(response.headers.get("retry-after"), time.time())
    except Exception as exc:
        outcome.error_class, detail = classify(exc)
        outcome.error_detail = _clean(detail)[:500]
    outcome.duration_ms = round((time.perf_counter() - clock) * 1000)
    return outcome
