"""Real-time transports: SSE (one or many documents), long-poll and poll, and connection stats.

All three read the same progress (livedoc.progress) through this process's stream hub; none of them
holds a Redis connection or a database connection while it waits.
"""
from __future__ import annotations

import json
import time

import gevent
import gevent.lock
import simple_websocket
from flask import Blueprint, Response, copy_current_request_context, current_app, jsonify, request
from flask_login import current_user, login_required

from livedoc import documents, metrics, msgrate, origins, sse
from livedoc import hub as hubmod
from livedoc.audit import audit
from livedoc.errors import Forbidden, LivedocError, NotFound, TooManyRequests
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


def _fall_back(flags) -> Response:
    """204: by the SSE standard the browser stops reconnecting; the header names what to use instead."""
    return Response(status=204, headers={"X-Livedoc-Mode": flags.transport})


@bp.route("/api/documents/<doc_id>/events")
@login_required
@limited
def events(doc_id: str):
    """SSE stream of a document's progress; 204 when SSE is off, so clients fall back."""
    doc = documents.get_owned(doc_id, current_user)
    flags = realtime_flags()
    if not flags.allows("sse"):
        return _fall_back(flags)
    current = documents.current_progress(redis_conn(), doc)
    last = sse.parse_last_event_id(request.headers.get("Last-Event-ID"))
    return _open_stream([(doc, current, last)], multi=False)


@bp.route("/api/events")
@login_required
@limited
def events_multi():
    """One SSE stream for many documents (`?docs=id,id,...`, or every unfinished one of the user)."""
    flags = realtime_flags()
    if not flags.allows("sse"):
        return _fall_back(flags)
    cap = current_app.config["MAX_DOCS_PER_STREAM"]
    raw = request.args.get("docs")
    if raw is None:
        docs = documents.unfinished(current_user, limit=cap)
    else:
        ids = list(dict.fromkeys(x for x in raw.split(",") if x))
        if not ids or len(ids) > cap:
            raise LivedocError(f"Name 1 to {cap} documents in 'docs'.", code="bad_parameter")
        owned = documents.owned_among(ids, current_user.id)
        if len(owned) != len(ids):
            raise NotFound()  # one absent or foreign id refuses the stream, as get_owned would
        docs = [owned[x] for x in ids]
    if not docs:
        return _fall_back(flags)
    states = documents.progress_of_many(redis_conn(), docs)
    cursor = request.headers.get("Last-Event-ID") or request.args.get("cursor")
    lasts = sse.parse_cursor(cursor, [d.id for d in docs])
    return _open_stream([(d, states[d.id], lasts[d.id]) for d in docs], multi=True)


def _open_stream(items: list, multi: bool) -> Response:
    """Admit and start an SSE response over (document, current progress, last seen seq) items."""
    # A cursor from the future is not ours: start over rather than stay silent.
    watched = [(doc.id, doc.job_id, current, last if last <= current["seq"] else 0)
               for doc, current, last in items]
    user_id, username = current_user.id, current_user.username
    db.session.close()  # the stream outlives the request: give the database connection back now
    if any(not is_terminal(current) and job_id for _, job_id, current, _ in watched):
        _admit("sse-multi" if multi else "sse")
    cfg = current_app.config
    stream = _sse_stream(hub(), watched, multi, user_id, username,
                         cfg["SSE_PING_INTERVAL"] / 1000, cfg["SSE_RETRY"], request.remote_addr)
    return Response(stream, mimetype="text/event-stream", headers={
        "Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Livedoc-Mode": "sse"})


def _sse_stream(h: hubmod.StreamHub, watched: list, multi: bool, user_id: int, username: str,
                ping: float, retry_ms: int, ip: str | None):
    transport = "sse-multi" if multi else "sse"
    started = time.monotonic()
    reason = "client_gone"
    conn = None
    last = {doc_id: seen for doc_id, _, _, seen in watched}
    names = ",".join(doc_id for doc_id, _, _, _ in watched)
    audit("stream_open", user=username, document=names, transport=transport, ip=ip)

    def message(doc_id: str, prog: dict, encoded: str | None = None) -> str:
        last[doc_id] = prog["seq"]
        if not multi:
            return sse.message(encoded or prog, event=sse.event_name(prog), id=prog["seq"])
        data = encoded or sse.json_text(prog)
        # Each event names its document; its id is the cursor over all of them.
        return sse.message(f'{{"document_id":"{doc_id}",{data[1:]}', event=sse.event_name(prog),
                           id=sse.encode_cursor(last))

    try:
        yield sse.retry(retry_ms)
        conn = h.connect(user_id, transport)
        for doc_id, job_id, current, seen in watched:
            if current["seq"] > seen:
                yield message(doc_id, current)
            if not is_terminal(current) and job_id:
                conn.watch(job_id, doc_id, current)
        current = None  # noqa: F841 - the loop variable would otherwise pin a dict per stream
        watched.clear()  # the hub holds what is current from here on; do not keep a copy per stream
        next_ping = time.monotonic() + ping
        while conn.subs:
            for doc_id, sub in list(conn.subs.items()):
                prog = sub.progress
                if prog is not None and prog["seq"] > last[doc_id]:
                    yield message(doc_id, prog, sub.encoded)
                    h.note_sent(prog, transport)
                    if is_terminal(prog):
                        conn.unwatch(doc_id)
            if not conn.subs:
                break
            if conn.closed:
                if conn.closed == "mode":
                    yield sse.message({"mode": h.flags.transport}, event="mode")
                # On shutdown the stream just ends: EventSource reconnects by itself, with its
                # Last-Event-ID, to a live worker.
                reason = conn.closed
                return
            timeout = next_ping - time.monotonic()
            if timeout <= 0:
                yield sse.comment("ping")
                next_ping = time.monotonic() + ping
            else:
                conn.wait(timeout)
        reason = "terminal"
    finally:
        # Runs when the stream ends, when a write to a vanished client fails, and on shutdown.
        if conn is not None:
            h.disconnect(conn)
        audit("stream_close", user=username, document=names, transport=transport, ip=ip,
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
    if wait > 0 and flags.allows("longpoll") and not changed:
        _admit("longpoll")
        doc_id_, job_id, user_id = doc.id, doc.job_id, current_user.id
        db.session.close()  # do not hold a database connection while parked
        h = hub()
        conn = h.connect(user_id, "longpoll")
        sub = conn.watch(job_id, doc_id_, prog)
        try:
            deadline = time.monotonic() + wait
            while not conn.closed:
                newest = sub.progress
                if newest is not None and newest["seq"] > after:
                    body = {**newest, "document_id": doc_id_}
                    h.note_sent(newest, "longpoll")
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                conn.wait(remaining)
        finally:
            h.disconnect(conn)
        flags = h.flags
    resp = jsonify(body)
    resp.headers["X-Livedoc-Mode"] = flags.transport
    resp.headers["Cache-Control"] = "no-store"
    return resp


class _WebSocketResponse(Response):
    """What the view returns once the socket has been taken over: nothing more may be written."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def __call__(self, environ, start_response):
        if self.mode == "gunicorn":
            raise StopIteration()  # gunicorn's sign that the app handled (and closes) the socket
        return super().__call__(environ, start_response)


@bp.route("/api/ws", websocket=True)
@login_required
@limited
def websocket():
    """WebSocket transport: subscribe to documents, receive their progress (when WEBSOCKET_ENABLED)."""
    flags = realtime_flags()
    if not flags.allows("ws"):
        raise Forbidden("The WebSocket transport is switched off; use /api/events.", code="transport_off")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise LivedocError("Expected a WebSocket upgrade.", code="not_websocket")
    if not origins.origin_ok(request, current_app.config):
        audit("origin_refused", transport="ws", origin=request.headers.get("Origin", "")[:200])
        raise Forbidden("WebSockets may be opened only from this site's own pages.", code="bad_origin")
    _admit("ws")
    cfg = current_app.config
    user_id, username, ip = current_user.id, current_user.username, request.remote_addr
    db.session.close()
    try:
        ws = simple_websocket.Server(request.environ, max_message_size=64 * 1024)
    except (ValueError, RuntimeError, OSError):
        raise LivedocError("Bad WebSocket handshake.", code="bad_handshake") from None
    session = _WsSession(hub(), ws, user_id, username, ip, cfg["SSE_PING_INTERVAL"] / 1000,
                         cfg["MAX_DOCS_PER_STREAM"], msgrate.MessageRate(cfg["WS_MESSAGE_RATE"]))
    try:
        session.run()
    finally:
        try:
            ws.close()
        except (simple_websocket.ConnectionClosed, OSError):
            pass
    return _WebSocketResponse(ws.mode)


class _WsSession:
    """One WebSocket: a reader greenlet takes (un)subscribe and pong messages; run() sends progress."""

    def __init__(self, h: hubmod.StreamHub, ws, user_id: int, username: str, ip: str | None,
                 ping: float, cap: int, rate: msgrate.MessageRate):
        self.h, self.ws, self.ping, self.cap, self.rate = h, ws, ping, cap, rate
        self.user_id, self.username, self.ip = user_id, username, ip
        self.conn = h.connect(user_id, "ws")
        self.last: dict[str, int] = {}
        self.lock = gevent.lock.Semaphore()  # the reader and the sender both write frames
        self.awaiting_pong = False
        self.reason = "client_gone"

    def send(self, payload: dict) -> None:
        with self.lock:
            self.ws.send(sse.json_text(payload))

    def run(self) -> None:
        started = time.monotonic()
        audit("stream_open", user=self.username, transport="ws", ip=self.ip)
        # The reader looks documents up, so it runs inside (a copy of) this request's context.
        reader = gevent.spawn(copy_current_request_context(self._read))
        try:
            self._send_loop(reader)
        except (simple_websocket.ConnectionClosed, OSError):
            pass
        finally:
            reader.kill(block=False)
            self.h.disconnect(self.conn)
            audit("stream_close", user=self.username, transport="ws", ip=self.ip,
                  duration=round(time.monotonic() - started, 3), reason=self.reason)

    def _send_loop(self, reader: gevent.Greenlet) -> None:
        next_ping = time.monotonic() + self.ping
        while not reader.dead:
            for doc_id, sub in list(self.conn.subs.items()):
                prog = sub.progress
                if prog is not None and prog["seq"] > self.last.get(doc_id, 0):
                    self.last[doc_id] = prog["seq"]
                    self.send({"type": sse.event_name(prog), "document_id": doc_id, "data": prog})
                    self.h.note_sent(prog, "ws")
                    if is_terminal(prog):
                        self.conn.unwatch(doc_id)
            if self.conn.closed:
                if self.conn.closed == "mode":
                    self.send({"type": "mode", "mode": self.h.flags.transport})
                self.reason = self.conn.closed
                return
            if time.monotonic() >= next_ping:
                if self.awaiting_pong:
                    self.reason = "stale"  # no pong for a whole ping interval: the peer is gone
                    return
                self.awaiting_pong = True
                self.send({"type": "ping"})
                next_ping = time.monotonic() + self.ping
            self.conn.wait(max(0.0, next_ping - time.monotonic()))

    def _read(self) -> None:
        try:
            self._read_messages()
        except simple_websocket.ConnectionClosed:
            pass  # the peer closed: the send loop ends on the wake below
        finally:
            # Without this the send loop would sleep until the next ping, holding the connection
            # and the user's stream slot for a socket that is already gone.
            self.conn.wake()

    def _read_messages(self) -> None:
        while True:
            raw = self.ws.receive()
            if raw is None:
                continue
            if not self.rate.hit():
                self.send({"type": "error", "code": "rate_limited",
                           "message": f"More than {self.rate.limit} messages in {self.rate.per:g} s."})
                self.reason = "rate_limited"
                return  # the send loop sees the reader end and closes the socket
            try:
                msg = json.loads(raw)
                kind = msg["type"]
            except (ValueError, TypeError, KeyError):
                self.send({"type": "error", "code": "bad_message", "message": "Send JSON with a 'type'."})
                continue
            if kind == "pong":
                self.awaiting_pong = False
            elif kind == "ping":
                self.send({"type": "pong"})
            elif kind in ("subscribe", "unsubscribe"):
                ids = msg.get("documents")
                well_formed = isinstance(ids, list) and all(isinstance(x, str) for x in ids)
                if not well_formed or len(ids) > self.cap:
                    self.send({"type": "error", "code": "bad_message",
                               "message": f"'documents' must be a list of at most {self.cap} ids."})
                elif kind == "subscribe":
                    self._subscribe(list(dict.fromkeys(ids)))
                else:
                    for doc_id in ids:
                        self.conn.unwatch(doc_id)
                        self.last.pop(doc_id, None)
            else:
                self.send({"type": "error", "code": "bad_message", "message": f"Unknown type {kind!r}."})
            self.conn.wake()

    def _subscribe(self, ids: list[str]) -> None:
        if len(self.conn.subs) + len(ids) > self.cap:
            self.send({"type": "error", "code": "too_many_documents",
                       "message": f"At most {self.cap} documents per connection."})
            return
        owned = documents.owned_among(ids, self.user_id)
        allowed = [d for d in ids if d in owned]
        denied = [d for d in ids if d not in owned]  # absent and not-yours look the same
        states = documents.progress_of_many(redis_conn(), [owned[d] for d in allowed])
        for doc_id in allowed:
            doc, current = owned[doc_id], states[doc_id]
            self.last.setdefault(doc_id, 0)
            if doc.job_id and not is_terminal(current):
                self.conn.watch(doc.job_id, doc.id, current)
            elif current["seq"] > self.last[doc_id]:
                self.last[doc_id] = current["seq"]
                self.send({"type": sse.event_name(current), "document_id": doc_id, "data": current})
        db.session.close()
        self.send({"type": "subscribed", "documents": allowed, "denied": denied})


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
def prometheus_metrics():
    """Prometheus metrics of this host's web processes (admins, or the read-only METRICS_TOKEN)."""
    sent = request.headers.get("Authorization")
    if not metrics.scraper_token_ok(sent, current_app.config["METRICS_TOKEN"]):
        if not current_user.is_authenticated:
            return current_app.login_manager.unauthorized()
        if not current_user.is_admin:
            raise Forbidden()
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
