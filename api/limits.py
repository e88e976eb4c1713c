"""Rate limits on abuse: failed authentication per client address, requests and events per ingest
key, writes per user token. One mechanism for all four: a token bucket per key, kept in memory.

Each limit is ``quota`` units a minute: a key may spend the whole quota at once, and it refills
continuously at ``quota`` per minute (the generic cell rate algorithm: one "theoretical arrival
time" per key, no timestamps kept, exact ``Retry-After``). A refused request spends nothing.

Answers carry the fields of the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers-10): ``RateLimit-Policy: "<name>";q=<quota>;w=60`` and
``RateLimit: "<name>";r=<remaining>;t=<seconds until full>``; a refusal is ``429`` (RFC 6585) with
``Retry-After`` (RFC 9110), the seconds until the request would be accepted.

The counters live in each API process: with W worker processes on N nodes, a client whose requests
are spread over all of them can reach W x N times a quota (a keep-alive connection stays on one
process). They bound what a leaked key, a runaway client or a scanner costs; they are not billing
quotas.

Why not a library: Litestar's ``RateLimitMiddleware`` counts every request of a route alike (not
failures only, not events), before authentication, and keeps a JSON list of timestamps per key in
a store behind one lock; ``limits`` keeps one entry per unit in its moving window (a million a
minute per ingest key) and its in-memory storage restarts a timer thread every 10 ms.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from api.auth.context import Principal
from api.errors import TooManyRequests
from api.events.schemas import MAX_BATCH_EVENTS
from api.observability import RESPONSE_HEADERS
from api.settings import Settings, SettingsError
from api.tokens.models import TokenKind

#: Seconds over which a quota refills (the policies' ``w``).
WINDOW = 60.0
#: Methods that read; everything else a user token sends counts as a write.
READS = frozenset({"GET", "HEAD", "OPTIONS"})
INGEST_KEYS = frozenset({TokenKind.org_ingest, TokenKind.platform_ingest})
#: Past this many keys in one limit, keys whose bucket has refilled are forgotten (they are
#: indistinguishable from new ones); if that is not enough, the oldest half goes.
MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: Units left after this request (0 when refused).
    remaining: int
    #: Seconds until the bucket is full again.
    reset: float
    #: Seconds until this request would be accepted (0 when allowed).
    retry_after: float


class RateLimit:
    """``quota`` units per ``WINDOW`` seconds for each key, as a token bucket of ``quota`` units."""

    def __init__(self, name: str, quota: int, window: float = WINDOW) -> None:
        if quota < 1:
            raise ValueError("a rate limit needs a quota of at least 1")
        self.name, self.quota, self.window = name, quota, window
        self.interval = window / quota
        self._tats: dict[Hashable, float] = {}
        self._sweep_at = 1024
        self._label = f'"{name}"'.encode()
        self.policy = b"%s;q=%d;w=%d" % (self._label, quota, math.ceil(window))

    def take(self, key: Hashable, cost: int = 1) -> Verdict:
        """Spend ``cost`` units of ``key``'s bucket if it holds them; a refusal spends nothing."""
        now = time.monotonic()
        tat = max(self._tats.get(key, now), now)
        new_tat = tat + cost * self.interval
        allowed_at = new_tat - self.window
        if allowed_at > now + 1e-9:
            return Verdict(False, self._left(tat, now), tat - now, allowed_at - now)
        if key not in self._tats and len(self._tats) >= self._sweep_at:
            self._sweep(now)
        self._tats[key] = new_tat
        return Verdict(True, self._left(new_tat, now), new_tat - now, 0.0)

    def exhausted(self, key: Hashable) -> Verdict | None:
        """The refusal ``take(key)`` would give, without spending anything; None if a unit is left."""
        now = time.monotonic()
        tat = max(self._tats.get(key, now), now)
        allowed_at = tat + self.interval - self.window
        if allowed_at > now + 1e-9:
            return Verdict(False, 0, tat - now, allowed_at - now)
        return None

    def _left(self, tat: float, now: float) -> int:
        return max(0, int((self.window - (tat - now)) / self.interval + 1e-9))

    def _sweep(self, now: float) -> None:
        self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
        if len(self._tats) >= MAX_KEYS:
            keep = list(self._tats.items())[len(self._tats) // 2 :]
            self._tats = dict(keep)
        self._sweep_at = max(1024, 2 * len(self._tats))

    def header(self, verdict: Verdict) -> bytes:
        """This policy's member of the ``RateLimit`` field for ``verdict``."""
        return b"%s;r=%d;t=%d" % (self._label, verdict.remaining, math.ceil(verdict.reset))


@dataclass(frozen=True, slots=True)
class Limits:
    """The API's limits (None: that limit is off), built from the settings by ``create_app``."""

    failed_auth: RateLimit | None
    ingest_requests: RateLimit | None
    ingest_events: RateLimit | None
    writes: RateLimit | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        events = settings.rate_limit_ingest_events
        if 0 < events < MAX_BATCH_EVENTS:
            raise SettingsError(
                f"KEEL_RATE_LIMIT_INGEST_EVENTS_PER_MINUTE must be 0 (off) or at least {MAX_BATCH_EVENTS:,}"
                f" (one full batch), not {events}"
            )

        def limit(name: str, quota: int) -> RateLimit | None:
            return RateLimit(name, quota) if quota > 0 else None

        return cls(
            failed_auth=limit("failed-auth", settings.rate_limit_failed_auth),
            ingest_requests=limit("ingest-requests", settings.rate_limit_ingest_requests),
            ingest_events=limit("ingest-events", events),
            writes=limit("writes", settings.rate_limit_writes),
        )


def client_key(scope: Any) -> str:
    """The client address a request counts against: its IPv4 address, or its IPv6 /64 (one host
    usually holds a whole /64). Behind a proxy, uvicorn's ``--forwarded-allow-ips`` (environment
    ``FORWARDED_ALLOW_IPS``, default 127.0.0.1 and ::1) says whose ``X-Forwarded-For`` names the client."""
    client = scope.get("client")
    host = client[0] if client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _advertise(scope: Any, limit: RateLimit, verdict: Verdict) -> None:
    headers = scope.setdefault("state", {}).setdefault(RESPONSE_HEADERS, [])
    headers.append((b"ratelimit-policy", limit.policy))
    headers.append((b"ratelimit", limit.header(verdict)))


def _spend(scope: Any, limit: RateLimit, key: Hashable, cost: int, refusal: str) -> None:
    verdict = limit.take(key, cost)
    _advertise(scope, limit, verdict)
    if not verdict.allowed:
        raise TooManyRequests(refusal, retry_after=verdict.retry_after)


def _per_minute(limit: RateLimit, unit: str) -> str:
    return f"{limit.quota:,} {unit} a minute"


def refuse_locked_out_address(limits: Limits, scope: Any) -> None:
    """Before a token is looked up: an address out of failed attempts is refused without a lookup."""
    limit = limits.failed_auth
    if limit is None:
        return
    verdict = limit.exhausted(client_key(scope))
    if verdict is not None:
        _advertise(scope, limit, verdict)
        raise TooManyRequests(
            f"too many failed authentication attempts from this address"
            f" (at most {_per_minute(limit, 'failures')})",
            retry_after=verdict.retry_after,
        )


def count_failed_auth(limits: Limits, scope: Any) -> None:
    """A 401 is about to be answered: spend one of the address's attempts (429 when none is left)."""
    if limits.failed_auth is not None:
        _spend(
            scope, limits.failed_auth, client_key(scope), 1,
            f"too many failed authentication attempts from this address"
            f" (at most {_per_minute(limits.failed_auth, 'failures')})",
        )  # fmt: skip


def charge_request(limits: Limits, principal: Principal, scope: Any) -> None:
    """An authenticated request: ingest keys spend a request, user tokens a write unless it reads."""
    if principal.kind in INGEST_KEYS:
        if limits.ingest_requests is not None:
            _spend(
                scope, limits.ingest_requests, principal.token_id, 1,
                f"this ingest key is over its {_per_minute(limits.ingest_requests, 'requests')}",
            )  # fmt: skip
    elif scope["method"] not in READS and limits.writes is not None:
        _spend(
            scope, limits.writes, principal.token_id, 1,
            f"this token is over its {_per_minute(limits.writes, 'writes')}",
        )  # fmt: skip


def charge_events(limits: Limits, principal: Principal, count: int, scope: Any) -> None:
    """``count`` events sent with an ingest key, before any is stored: all or none are accepted."""
    if limits.ingest_events is not None and count > 0:
        _spend(
            scope, limits.ingest_events, principal.token_id, count,
            f"{count:,} more events would take this ingest key over its"
            f" {_per_minute(limits.ingest_events, 'events')}",
        )  # fmt: skip
