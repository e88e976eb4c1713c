"""Prometheus metrics: request rates and latencies (Litestar's middleware, grouped by route
template so ids do not explode the label space) and Keel's own counters."""

from __future__ import annotations

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client import Counter

from api.deps import PUBLIC

PROMETHEUS = PrometheusConfig(app_name="keel", prefix="keel", group_path=True, exclude=["/metrics"])

EVENTS_ACCEPTED = Counter("keel_events_accepted_total", "Events stored")
EVENTS_DUPLICATES = Counter(
    "keel_events_duplicates_total", "Events recognized as already stored (message_id)"
)
EVENTS_REJECTED = Counter("keel_events_rejected_total", "Events refused, item by item")


class MetricsController(PrometheusController):
    path = "/metrics"
    opt = PUBLIC
    include_in_schema = False
