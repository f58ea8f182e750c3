"""Benchmark peer: naive per-connection polling SSE (what livedoc would be without the stream hub).

Every open stream is its own loop: read the RQ job's meta from Redis (the same HMGET and the same
decoding as livedoc), emit an event when `seq` changed, sleep SSE_POLL_INTERVAL, ping every
SSE_PING_INTERVAL. No auth, no database: only the fan-out strategy differs from livedoc.

Served by bench/run.py as `gunicorn -k gevent --worker-connections 10000 -w 1 peer_naive:app`.
"""

from __future__ import annotations

import json
import os
import time

import gevent
from flask import Flask, Response

from livedoc import progress
from livedoc.redis_client import connect

app = Flask(__name__)
POLL = int(os.environ.get("SSE_POLL_INTERVAL", "2000")) / 1000
PING = int(os.environ.get("SSE_PING_INTERVAL", "30000")) / 1000
# The same blocking pool livedoc uses (REDIS_MAX_CONNECTIONS defaults to 50 there too).
redis = connect(os.environ["REDIS_URL"], max_connections=int(os.environ.get("REDIS_MAX_CONNECTIONS", "50")))


@app.route("/events/<job_id>")
def events(job_id: str):
    """SSE stream of one job's progress, polled by this connection alone."""

    def stream():
        yield "retry: 3000\n\n"
        last = 0
        next_ping = time.monotonic() + PING
        while True:
            prog = progress.read(redis, job_id)
            if prog is not None and prog["seq"] > last:
                last = prog["seq"]
                data = json.dumps(prog, separators=(",", ":"))
                yield f"event: progress\nid: {last}\ndata: {data}\n\n"
            if time.monotonic() >= next_ping:
                yield ": ping\n\n"
                next_ping = time.monotonic() + PING
            gevent.sleep(POLL)

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@app.route("/health")
def health():
    """Liveness for the runner."""
    return "ok"
