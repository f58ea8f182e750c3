"""WebSocket `/api/ws`: subscribe / unsubscribe / pong in; the same events as SSE out."""
from __future__ import annotations

import json
import time

import gevent
import gevent.lock
import simple_websocket
from flask import Response, copy_current_request_context, current_app, request
from flask_login import current_user, login_required

from blueprints.realtime import admit, bp, limited
from livedoc import documents, msgrate, origins, sse
from livedoc.audit import audit
from livedoc.delivery import PING, Closed, Delivery, Event
from livedoc.errors import Forbidden, LivedocError
from livedoc.extensions import db
from livedoc.flags import Transport
from livedoc.hub import StreamHub
from livedoc.web import realtime_flags, redis_conn, stream_hub


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
    if not flags.allows(Transport.WS):
        raise Forbidden("The WebSocket transport is switched off; use /api/events.", code="transport_off")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise LivedocError("Expected a WebSocket upgrade.", code="not_websocket")
    if not origins.origin_ok(request, current_app.config):
        audit("origin_refused", transport="ws", origin=request.headers.get("Origin", "")[:200])
        raise Forbidden("WebSockets may be opened only from this site's own pages.", code="bad_origin")
    admit(Transport.WS)
    cfg = current_app.config
    user_id, username, ip = current_user.id, current_user.username, request.remote_addr
    db.session.close()
    try:
        ws = simple_websocket.Server(request.environ, max_message_size=64 * 1024)
    except (ValueError, RuntimeError, OSError):
        raise LivedocError("Bad WebSocket handshake.", code="bad_handshake") from None
    session = _WsSession(stream_hub(), ws, user_id, username, ip, cfg["SSE_PING_INTERVAL"] / 1000,
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

    def __init__(self, h: StreamHub, ws, user_id: int, username: str, ip: str | None,
                 ping: float, cap: int, rate: msgrate.MessageRate):
        self.h, self.ws, self.ping, self.cap, self.rate = h, ws, ping, cap, rate
        self.user_id, self.username, self.ip = user_id, username, ip
        self.conn = h.connect(user_id, Transport.WS)
        self.delivery = Delivery(h, self.conn, Transport.WS)
        self.lock = gevent.lock.Semaphore()  # the reader and the sender both write frames
        self.awaiting_pong = False
        self.reason = "client_gone"

    def send(self, payload: dict) -> None:
        """Write one JSON message."""
        self.send_text(sse.json_text(payload))

    def send_text(self, text: str) -> None:
        """Write one message already encoded."""
        with self.lock:
            self.ws.send(text)

    def send_events(self, batch: list[Event]) -> None:
        """Write each event (the progress JSON is spliced in as encoded once by the hub)."""
        for e in batch:
            self.send_text(f'{{"type":"{e.kind}","document_id":"{e.doc_id}","data":{e.encoded}}}')

    def run(self) -> None:
        """Serve the socket until it closes, goes stale, or the hub ends it."""
        started = time.monotonic()
        audit("stream_open", user=self.username, transport=Transport.WS.value, ip=self.ip)
        # The reader looks documents up, so it runs inside (a copy of) this request's context.
        reader = gevent.spawn(copy_current_request_context(self._read))
        try:
            self._send_loop()
        except (simple_websocket.ConnectionClosed, OSError):
            pass
        finally:
            reader.kill(block=False)
            self.h.disconnect(self.conn)
            audit("stream_close", user=self.username, transport=Transport.WS.value, ip=self.ip,
                  duration=round(time.monotonic() - started, 3), reason=self.reason)

    def _send_loop(self) -> None:
        for item in self.delivery.loop(self.ping, stay_open=True):
            if item is PING:
                if self.awaiting_pong:
                    self.reason = "stale"  # no pong for a whole ping interval: the peer is gone
                    return
                self.awaiting_pong = True
                self.send({"type": "ping"})
            elif isinstance(item, Closed):
                if item.mode:
                    self.send({"type": "mode", "mode": item.mode})
                self.reason = item.reason
                return
            else:
                self.send_events(item)

    def _read(self) -> None:
        try:
            self._read_messages()
        except simple_websocket.ConnectionClosed:
            pass  # the peer closed: the send loop ends on the wake below
        finally:
            # Without this the send loop would sleep until the next ping, holding the connection
            # and the user's stream slot for a socket that is already gone.
            self.conn.end("client_gone")

    def _read_messages(self) -> None:
        while True:
            raw = self.ws.receive()
            if raw is None:
                continue
            if not self.rate.hit():
                self.send({"type": "error", "code": "rate_limited",
                           "message": f"More than {self.rate.limit} messages in {self.rate.per:g} s."})
                self.reason = "rate_limited"
                return  # the reader's end ends the send loop, which closes the socket
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
                        self.delivery.stop(doc_id)
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
        news = []
        for doc_id in allowed:
            doc = owned[doc_id]
            event = self.delivery.start(doc_id, doc.job_id, states[doc_id],
                                        seen=self.delivery.seen.get(doc_id, 0))
            if event is not None:
                news.append(event)
        db.session.close()
        self.send_events(news)
        self.send({"type": "subscribed", "documents": allowed, "denied": denied})
