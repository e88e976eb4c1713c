"""Prometheus metrics: request rates and latencies (Litestar's middleware, grouped by route
template so ids do not explode the label space) and Keel's own counters.

``/metrics`` names every route, counts every organization's traffic and shows the queue depths,
so it is served only to a scraper that presents ``KEEL_METRICS_TOKEN`` as a bearer token; without
that setting it does not exist (404, as an unknown route).
"""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client import Counter

from api.deps import PUBLIC
from api.errors import NotFound, Unauthorized
from api.settings import Settings

PROMETHEUS = PrometheusConfig(app_name="keel", prefix="keel", group_path=True, exclude=["/metrics"])

EVENTS_ACCEPTED = Counter("keel_events_accepted_total", "Events stored")
EVENTS_DUPLICATES = Counter(
    "keel_events_duplicates_total", "Events recognized as already stored (message_id)"
)
EVENTS_REJECTED = Counter("keel_events_rejected_total", "Events refused, item by item")


def require_metrics_token(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    """Let through only a bearer of the configured metrics token (compared in constant time)."""
    settings: Settings = connection.app.state.settings
    if settings.metrics_token is None:
        raise NotFound("no such route")
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), settings.metrics_token.encode()
    ):
        raise Unauthorized("/metrics needs `Authorization: Bearer <KEEL_METRICS_TOKEN>`")


class MetricsController(PrometheusController):
    path = "/metrics"
    opt = PUBLIC  # not a Keel API token: the guard checks the metrics token instead
    guards = [require_metrics_token]
    include_in_schema = False
