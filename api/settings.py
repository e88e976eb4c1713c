"""Keel's settings: read once from ``KEEL_*`` environment variables (and a ``.env`` file).

``create_app(settings)`` and every command take a :class:`Settings` explicitly, so tests build
their own instead of patching globals.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dotenv import dotenv_values

DEFAULT_RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
#: The shortest metrics token accepted: a guessable one would hand out every route's traffic.
MIN_SECRET_LENGTH = 16
#: Each day of the dedupe window is one more index read per event (api/events/store.py).
MAX_DEDUPE_DAYS = 31
DEFAULT_DEDUPE_DAYS = 1


class SettingsError(ValueError):
    """A ``KEEL_*`` variable holds a value Keel cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    #: The application's connection: a role that owns nothing (api/db/roles.py).
    database_url: str | None = None
    #: The schema owner's connection, used by ``keel db upgrade`` only (KEEL_DATABASE_URL if unset).
    admin_database_url: str | None = None
    #: Let serve, worker and flows run as a superuser or the tables' owner (not recommended).
    allow_privileged_database_role: bool = False
    data_dir: Path = Path(".keel")
    lake_url: str | None = None
    #: S3-compatible endpoint (``http(s)://host[:port]``) for an ``s3://`` lake; AWS when unset.
    lake_s3_endpoint: str | None = None
    warehouse_path: Path | None = None
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    webhook_retry_schedule: tuple[int, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_allow_private_targets: bool = False
    events_retention_days: int = 30
    #: Exact dedupe window: a replay of a message received up to this many days (24 h each) after
    #: its first copy is always a duplicate (one received in the same or the previous N UTC days
    #: is; api/events/store.py). 0: the same UTC day only.
    events_dedupe_days: int = DEFAULT_DEDUPE_DAYS
    audit_retention_days: int = 365
    #: The key audit stream credentials are encrypted with (32 bytes, base64); unset: a key file
    #: generated once in the data dir (embedded and single-node setups; api/audit/streams/secrets.py).
    audit_stream_key: str | None = None
    #: Longest wait between two attempts at a failing audit stream (the backoff doubles up to it).
    audit_stream_retry_max_seconds: float = 300.0
    #: ``verify`` checks a chain of at least ``audit_verify_split_entries`` entries in ranges, each
    #: by a process of its own: this many at most (and no more than the CPUs); 1: never split.
    audit_verify_processes: int = 4
    audit_verify_split_entries: int = 100_000
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    #: The bearer token a Prometheus scraper presents to read ``/metrics``; unset: no ``/metrics``.
    metrics_token: str | None = None
    #: Seconds between ``last_used_at`` writes for one token: a hot key must not write a row per request.
    token_touch_interval: int = 60
    #: Seconds between the flag cache's version checks (the fallback when a NOTIFY is missed).
    flags_poll_interval: float = 1.0
    #: Seconds Prefect waits before retrying a billing task that could not read Stripe.
    billing_retry_delay: float = 30.0
    #: Rate limits (api/limits.py), each a quota a minute per key and per API process; 0 turns one off.
    #: Failed authentication attempts (401s) per client address.
    rate_limit_failed_auth: int = 300
    #: Requests per ingest key (org or platform), whatever the route.
    rate_limit_ingest_requests: int = 60_000
    #: Events per ingest key, counted per item sent (a batch is accepted whole or refused).
    rate_limit_ingest_events: int = 1_000_000
    #: Writes (any method but GET, HEAD, OPTIONS) per user token.
    rate_limit_writes: int = 3_000
    #: Seconds a request's headers may take to arrive (api/protocol.py); then 408 and closed.
    header_timeout: float = 10.0
    #: Seconds a request's body may take to arrive after its headers; then 408 and closed.
    body_timeout: float = 30.0
    #: Seconds a console session may go without a request before it ends (docs/console.md).
    console_idle_timeout: int = 1800
    #: Seconds a console session lasts at most, however active.
    console_max_age: int = 12 * 3600
    #: Seconds a one-time sign-in link (``keel console login``) stays usable.
    console_link_ttl: int = 900
    #: Mark the console's cookie ``Secure`` (set it when Keel is served behind HTTPS).
    console_secure_cookie: bool = False
    #: The Ed25519 key that signs audit checkpoints, as a private JWK (JSON text); never logged.
    audit_signing_key: str | None = field(default=None, repr=False)
    #: A file holding that JWK; default ``<data dir>/audit-signing-key.json``, generated if missing.
    audit_signing_key_file: Path | None = None

    @property
    def resolved_lake_url(self) -> str:
        return self.lake_url or str((self.data_dir / "lake").resolve())

    @property
    def resolved_warehouse_path(self) -> Path:
        return self.warehouse_path or self.data_dir / "warehouse.duckdb"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _flag(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {value!r}") from None


def _positive(value: str, name: str) -> int:
    number = _int(value, name)
    if number < 1:
        raise SettingsError(f"{name} must be at least 1, not {number}")
    return number


def _float(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise SettingsError(f"{name} must not be negative")
    return number


def _secret(value: str | None, name: str) -> str | None:
    if value is not None and len(value.strip()) < MIN_SECRET_LENGTH:
        raise SettingsError(f"{name} must be at least {MIN_SECRET_LENGTH} characters (a random token)")
    return value.strip() if value is not None else None


def _count(value: str, name: str) -> int:
    number = _int(value, name)
    if number < 0:
        raise SettingsError(f"{name} must not be negative (0 turns the limit off)")
    return number


def _seconds(value: str, name: str) -> float:
    number = _float(value, name)
    if number <= 0:
        raise SettingsError(f"{name} must be a number of seconds above 0")
    return number


def _dedupe_days(value: str, name: str) -> int:
    number = _int(value, name)
    if not 0 <= number <= MAX_DEDUPE_DAYS:
        raise SettingsError(f"{name} must be 0 to {MAX_DEDUPE_DAYS} days, not {number}")
    return number


def _text(value: str, name: str) -> str:
    return value


def _path(value: str, name: str) -> Path:
    return Path(value)


def _upper(value: str, name: str) -> str:
    return value.upper()


#: The settings read as they are: (field, variable after ``KEEL_``, parser). An unset or empty
#: variable leaves the dataclass's default, the one place each default is written.
PLAIN: tuple[tuple[str, str, Callable[[str, str], Any]], ...] = (
    ("database_url", "DATABASE_URL", _text),
    ("admin_database_url", "ADMIN_DATABASE_URL", _text),
    ("allow_privileged_database_role", "ALLOW_PRIVILEGED_DATABASE_ROLE", _flag),
    ("data_dir", "DATA_DIR", _path),
    ("lake_url", "LAKE_URL", _text),
    ("warehouse_path", "WAREHOUSE_PATH", _path),
    ("stripe_api_key", "STRIPE_API_KEY", _text),
    ("stripe_webhook_secret", "STRIPE_WEBHOOK_SECRET", _text),
    ("stripe_api_base", "STRIPE_API_BASE", _text),
    ("webhook_allow_private_targets", "WEBHOOK_ALLOW_PRIVATE_TARGETS", _flag),
    ("events_retention_days", "EVENTS_RETENTION_DAYS", _int),
    ("events_dedupe_days", "EVENTS_DEDUPE_DAYS", _dedupe_days),
    ("audit_retention_days", "AUDIT_RETENTION_DAYS", _positive),
    ("audit_stream_key", "AUDIT_STREAM_KEY", _text),
    ("audit_stream_retry_max_seconds", "AUDIT_STREAM_RETRY_MAX_SECONDS", _seconds),
    ("audit_verify_processes", "AUDIT_VERIFY_PROCESSES", _positive),
    ("audit_verify_split_entries", "AUDIT_VERIFY_SPLIT_ENTRIES", _positive),
    ("host", "HOST", _text),
    ("port", "PORT", _int),
    ("log_level", "LOG_LEVEL", _upper),
    ("billing_retry_delay", "BILLING_RETRY_DELAY", _float),
    # The rate limits and read deadlines.
    ("rate_limit_failed_auth", "RATE_LIMIT_FAILED_AUTH_PER_MINUTE", _count),
    ("rate_limit_ingest_requests", "RATE_LIMIT_INGEST_REQUESTS_PER_MINUTE", _count),
    ("rate_limit_ingest_events", "RATE_LIMIT_INGEST_EVENTS_PER_MINUTE", _count),
    ("rate_limit_writes", "RATE_LIMIT_WRITES_PER_MINUTE", _count),
    ("header_timeout", "HEADER_TIMEOUT", _seconds),
    ("body_timeout", "BODY_TIMEOUT", _seconds),
    # The staff console's sessions.
    ("console_idle_timeout", "CONSOLE_IDLE_TIMEOUT", _positive),
    ("console_max_age", "CONSOLE_MAX_AGE", _positive),
    ("console_link_ttl", "CONSOLE_LINK_TTL", _positive),
    ("console_secure_cookie", "CONSOLE_SECURE_COOKIE", _flag),
    ("audit_signing_key", "AUDIT_SIGNING_KEY", _text),
    ("audit_signing_key_file", "AUDIT_SIGNING_KEY_FILE", _path),
)


def load_settings(environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> Settings:
    """Read settings from the environment; a ``.env`` file fills in what the environment lacks."""
    env: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)

    def get(name: str) -> str | None:
        value = env.get(f"KEEL_{name}")
        return value if value not in (None, "") else None

    schedule: tuple[int, ...] = DEFAULT_RETRY_SCHEDULE
    if raw := get("WEBHOOK_RETRY_SCHEDULE"):
        try:
            schedule = tuple(int(part) for part in raw.split(","))
        except ValueError:
            raise SettingsError(
                f"KEEL_WEBHOOK_RETRY_SCHEDULE must be seconds separated by commas, not {raw!r}"
            ) from None
        if not schedule or any(s < 0 for s in schedule):
            raise SettingsError("KEEL_WEBHOOK_RETRY_SCHEDULE needs at least one non-negative number")

    lake_s3_endpoint = get("LAKE_S3_ENDPOINT")
    if lake_s3_endpoint is not None:
        parsed = urlparse(lake_s3_endpoint)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.path.strip("/"):
            raise SettingsError(
                f"KEEL_LAKE_S3_ENDPOINT must be http(s)://host[:port], not {lake_s3_endpoint!r}"
            )

    return Settings(
        lake_s3_endpoint=lake_s3_endpoint,
        webhook_retry_schedule=schedule,
        metrics_token=_secret(get("METRICS_TOKEN"), "KEEL_METRICS_TOKEN"),
        **{attr: parse(raw, f"KEEL_{name}") for attr, name, parse in PLAIN if (raw := get(name))},
    )
