"""Prometheus metrics for the real-time path (multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set).

With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR to an empty directory: each worker then
writes its samples there and /metrics merges them (gunicorn.conf.py marks dead workers).
"""

from __future__ import annotations

import hmac

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

OPEN_STREAMS = Gauge(
    "livedoc_open_streams", "Open real-time connections", ["transport"], multiprocess_mode="livesum"
)
EVENTS_SENT = Counter("livedoc_events_sent_total", "Progress events sent to clients", ["transport"])
SAVE_TO_SEND = Histogram(
    "livedoc_save_to_send_seconds",
    "Time from the worker's save to the send",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HUB_POLLS = Counter("livedoc_hub_polls_total", "Pipelined poll round trips made by stream hubs")
PUSH_MESSAGES = Counter("livedoc_push_messages_total", "Pub/sub progress messages for watched jobs")
REDIS_ERRORS = Counter("livedoc_redis_errors_total", "Redis errors seen by the real-time path", ["where"])
REJECTED = Counter("livedoc_streams_rejected_total", "Stream connects refused", ["reason"])


def render(multiprocess_dir: str = "") -> tuple[bytes, str]:
    """The metrics in the Prometheus text format, merged over processes when multiprocess is on."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


def scraper_token_ok(authorization: str | None, token: str) -> bool:
    """True when the request carries METRICS_TOKEN as its bearer token (a read-only scrape)."""
    scheme, _, sent = (authorization or "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(sent.strip().encode(), token.encode())
