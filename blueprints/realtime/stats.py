"""Connection stats over every web host, and this host's Prometheus metrics (operators only)."""

from __future__ import annotations

from flask import Response, current_app, jsonify, request

from blueprints.admin import admin_required
from blueprints.realtime.shared import bp
from livedoc import hub, metrics
from livedoc.appctx import realtime_flags, redis_conn, stream_hub


@bp.route("/api/realtime/stats")
@admin_required
def stats():
    """Connection stats summed over every web host (admins only)."""
    body = hub.collect_stats(redis_conn())
    body["local"] = stream_hub().snapshot()
    body["flags"] = realtime_flags().as_dict()
    return jsonify(body)


@bp.route("/metrics")
def prometheus_metrics():
    """Prometheus metrics of this host's web processes (admins, or the read-only METRICS_TOKEN)."""
    if metrics.scraper_token_ok(request.headers.get("Authorization"), current_app.config["METRICS_TOKEN"]):
        return _metrics()
    return admin_required(_metrics)()


def _metrics() -> Response:
    body, content_type = metrics.render(current_app.config["PROMETHEUS_MULTIPROC_DIR"])
    return Response(body, content_type=content_type)
