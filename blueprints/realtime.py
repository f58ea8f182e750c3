"""Real-time transports: SSE, long-poll and poll of one document's progress, and connection stats.

All three read the same progress (livedoc.progress) through this process's stream hub; none of them
holds a Redis connection or a database connection while it waits.
"""
from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify, request
from flask_login import current_user, login_required

from livedoc import documents, metrics, sse
from livedoc import hub as hubmod
from livedoc.audit import audit
from livedoc.errors import Forbidden, LivedocError, TooManyRequests
from livedoc.extensions import db, limiter
from livedoc.progress import is_terminal
from livedoc.web import hub, realtime_flags, redis_conn

bp = Blueprint("realtime", __name__)

MAX_SEQ = 2**53


def _int_arg(name: str, default: int, upper: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not raw.isascii() or not raw.isdigit() or int(raw) > upper:
        raise LivedocError(f"'{name}' must be a whole number from 0 to {upper}.", code="bad_parameter")
    return int(raw)


def _wait_arg(limit: int) -> float:
    raw = request.args.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw) if len(raw) <= 20 else -1.0
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise LivedocError(f"'wait' must be a number of seconds from 0 to {limit}.", code="bad_parameter")
    return min(value, float(limit))  # longer waits are served as the longest allowed one


def _stream_limit() -> str:
    return current_app.config["RATELIMIT_STREAM"]


def _user_key() -> str:
    return f"user:{current_user.get_id()}"


def _admit(transport: str) -> None:
    """Refuse a new stream when the user already holds MAX_STREAMS_PER_USER on all hosts."""
    cap = current_app.config["MAX_STREAMS_PER_USER"]
    if hub().user_streams(current_user.id) >= cap:
        metrics.REJECTED.labels("too_many_streams").inc()
        audit("limit_hit", limit="streams_per_user", transport=transport, cap=cap)
        raise TooManyRequests(f"You have {cap} live connections open already; close a tab.",
                              code="too_many_streams", retry_after=10)


# Connection attempts are limited per IP and per user (Redis storage: shared by all hosts).
stream_limits = [limiter.limit(_stream_limit), limiter.limit(_stream_limit, key_func=_user_key)]


def limited(view):
    """Apply both stream connection limits to a view."""
    for limit in stream_limits:
        view = limit(view)
    return view


@bp.route("/api/documents/<doc_id>/events")
@login_required
@limited
def events(doc_id: str):
    """SSE stream of a document's progress; 204 when real-time (SSE) is off, so clients fall back."""
    doc = documents.get_owned(doc_id, current_user)
    flags = realtime_flags()
    if flags.transport != "sse":
        return Response(status=204, headers={"X-Livedoc-Mode": flags.transport})
    current = documents.current_progress(redis_conn(), doc)
    if not is_terminal(current):
        _admit("sse")
    last = sse.parse_last_event_id(request.headers.get("Last-Event-ID"))
    if last > current["seq"]:
        last = 0  # a cursor from the future is not ours: start over rather than stay silent
    cfg = current_app.config
    stream = _sse_stream(hub(), doc.id, doc.job_id, current_user.id, current_user.username, current,
                         last, cfg["SSE_PING_INTERVAL"] / 1000, cfg["SSE_RETRY"], request.remote_addr)
    db.session.close()  # the stream outlives the request: give the database connection back now
    return Response(stream, mimetype="text/event-stream", headers={
        "Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Livedoc-Mode": "sse"})


def _sse_stream(h: hubmod.StreamHub, doc_id: str, job_id: str | None, user_id: int, username: str,
                current: dict, last: int, ping: float, retry_ms: int, ip: str | None):
    started = time.monotonic()
    reason = "client_gone"
    sub = None
    audit("stream_open", user=username, document=doc_id, transport="sse", ip=ip, last_event_id=last)
    try:
        yield sse.retry(retry_ms)
        if is_terminal(current) or job_id is None:
            if current["seq"] > last:
                yield sse.message(current, event=sse.event_name(current), id=current["seq"])
            reason = "terminal"
            return
        sub = h.subscribe(job_id, doc_id, user_id, "sse", current)
        next_ping = time.monotonic() + ping
        while True:
            prog = sub.progress
            if prog is not None and prog["seq"] > last:
                yield sse.message(sub.encoded, event=sse.event_name(prog), id=prog["seq"])
                h.note_sent(prog, "sse")
                last = prog["seq"]
                if is_terminal(prog):
                    reason = "terminal"
                    return
            if sub.closed:
                if sub.closed == "mode":
                    yield sse.message({"mode": h.flags.transport}, event="mode")
                # On shutdown the stream just ends: EventSource reconnects by itself, with its
                # Last-Event-ID, to a live worker.
                reason = sub.closed
                return
            timeout = next_ping - time.monotonic()
            if timeout <= 0:
                yield sse.comment("ping")
                next_ping = time.monotonic() + ping
            else:
                sub.wait(timeout)
    finally:
        # Runs when the stream ends, when a write to a vanished client fails, and on shutdown.
        if sub is not None:
            h.unsubscribe(sub)
        audit("stream_close", user=username, document=doc_id, transport="sse", ip=ip,
              duration=round(time.monotonic() - started, 3), reason=reason)


@bp.route("/api/documents/<doc_id>/status")
@login_required
@limited
def status(doc_id: str):
    """Poll (no `wait`) or long-poll (`after`, `wait`) a document's progress."""
    cfg = current_app.config
    after = _int_arg("after", -1, MAX_SEQ)
    wait = _wait_arg(cfg["LONGPOLL_MAX_WAIT"])
    doc = documents.get_owned(doc_id, current_user)
    flags = realtime_flags()
    prog = documents.current_progress(redis_conn(), doc)
    body = documents.status_body(doc, prog)
    # In poll mode (or with real-time off) `wait` is ignored: a rollback turns long-polls to polls.
    changed = prog["seq"] > after or is_terminal(prog) or doc.job_id is None
    if wait > 0 and flags.transport != "poll" and not changed:
        _admit("longpoll")
        doc_id_, job_id, user_id = doc.id, doc.job_id, current_user.id
        db.session.close()  # do not hold a database connection while parked
        h = hub()
        sub = h.subscribe(job_id, doc_id_, user_id, "longpoll", prog)
        try:
            deadline = time.monotonic() + wait
            while not sub.closed:
                newest = sub.progress
                if newest is not None and newest["seq"] > after:
                    body = {**newest, "document_id": doc_id_}
                    h.note_sent(newest, "longpoll")
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sub.wait(remaining)
        finally:
            h.unsubscribe(sub)
        flags = h.flags
    resp = jsonify(body)
    resp.headers["X-Livedoc-Mode"] = flags.transport
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/api/realtime/stats")
@login_required
def stats():
    """Connection stats summed over every web host (admins only)."""
    if not current_user.is_admin:
        raise Forbidden()
    body = hubmod.collect_stats(redis_conn())
    body["local"] = hub().snapshot()
    body["flags"] = realtime_flags().as_dict()
    return jsonify(body)


@bp.route("/metrics")
@login_required
def prometheus_metrics():
    """Prometheus metrics of this host's web processes (admins; scrape with a bearer token)."""
    if not current_user.is_admin:
        raise Forbidden()
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
