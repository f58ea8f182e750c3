"""Benchmark peer: Flask-SSE 1.0.0 as its README shows it (the `sse` blueprint, Redis pub/sub).

`GET /stream?channel=<job id>` streams what is PUBLISHed on that channel as
`{"data": ..., "type": "progress"}` JSON (what `flask_sse.sse.publish(data, type="progress",
channel=job)` sends). Flask-SSE opens one Redis client, and so one Redis connection, per stream; it
sends no byte (so no response headers either) until the first message arrives.

Served by bench/run.py as `gunicorn -k gevent --worker-connections 10000 -w 1 peer_flask_sse:app`.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.route("/health")
def health():
    """Liveness for the runner."""
    return "ok"
