"""WebSocket `/api/ws`: subscribe / unsubscribe / pong in; the same events as SSE out."""

from __future__ import annotations

import json
import time

import simple_websocket
from flask import Response, current_app, g, request
from flask_login import current_user, login_required
from gevent import get_hub
from wsproto.utilities import LocalProtocolError

from blueprints.realtime.shared import admit, bp, limited
from livedoc import documents, msgrate, origins, sse
from livedoc.appctx import realtime_flags, redis_conn, stream_hub
from livedoc.audit import audit
from livedoc.delivery import PING, Closed, Delivery, Event
from livedoc.errors import Forbidden, LivedocError
from livedoc.extensions import db
from livedoc.flags import Transport
from livedoc.hub import StreamHub

# Brackets one client message may hold: the protocol's messages have two, ids have none.
MAX_BRACKETS = 16
# Bytes one client message may have (larger ones close the socket, 1009): ~50 ids of 1 KiB at most.
MAX_MESSAGE = 64 * 1024


class _WebSocketResponse(Response):
    """What the view returns once the socket has been taken over: the WSGI server calls it, it
    serves the session, and nothing more may be written afterwards.

    The session runs here rather than in the view so that its parked greenlet's saved stack does not
    hold the view's decorators and Flask's dispatch frames (the request context is still pushed)."""

    def __init__(self, ws, session: _WsSession):
        super().__init__()
        self.ws, self.session = ws, session

    def __call__(self, environ, start_response):
        ws, self.ws = self.ws, None
        session, self.session = self.session, None
        try:
            session.run()
        finally:
            try:
                ws.close()
            except (simple_websocket.ConnectionClosed, OSError):
                pass
        if ws.mode == "gunicorn":
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
        ws = simple_websocket.Server(
            request.environ, max_message_size=MAX_MESSAGE, thread_class=_NoThread, event_class=_NoEvent
        )
    except (ValueError, RuntimeError, OSError):
        raise LivedocError("Bad WebSocket handshake.", code="bad_handshake") from None
    session = _WsSession(
        stream_hub(),
        ws,
        user_id,
        username,
        ip,
        cfg["SSE_PING_INTERVAL"] / 1000,
        cfg["MAX_DOCS_PER_STREAM"],
        msgrate.MessageRate(cfg["WS_MESSAGE_RATE"]),
    )
    return _WebSocketResponse(ws, session)


def _event_frame(e: Event) -> bytes:
    """An event as a complete WebSocket text frame.

    A server's frames are not masked, so the bytes are the same on every socket: built here once per
    save instead of once per watcher through wsproto. Uncompressed (RSV1 clear) is valid with or
    without permessage-deflate (RFC 7692 5.1), and nothing else is ever fragmented on these sockets."""
    payload = f'{{"type":"{e.kind}","document_id":"{e.doc_id}","data":{e.encoded}}}'.encode()
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


class _NoThread:
    """simple_websocket's reader thread, never started: the session's one greenlet reads the socket
    (a parked reader greenlet per socket cost ~6 KiB of saved stack and thread state)."""

    name = "(_thread)"

    def __init__(self, target=None):
        pass

    def start(self) -> None:
        """Nothing to start."""


class _NoEvent:
    """simple_websocket signals received messages on this; the session reads its buffer directly."""

    def set(self) -> None:
        """Nothing waits on it."""

    def clear(self) -> None:
        """Nothing waits on it."""

    def wait(self, timeout=None) -> bool:
        """Never waited on (ws.receive is not used)."""
        return True


class _Opened:
    """Stands in for wsproto's handshake once the socket is open: the real one keeps its h11
    connection and the upgrade request (KiBs per socket) for the socket's whole life."""

    def events(self):
        """A finished handshake has nothing more to say."""
        return iter(())


_OPENED = _Opened()


class _WsSession:
    """One WebSocket served by one greenlet: a readiness watcher on the socket wakes the same hub
    connection the progress does, and the delivery loop drains what arrived before sending."""

    def __init__(
        self,
        h: StreamHub,
        ws,
        user_id: int,
        username: str,
        ip: str | None,
        ping: float,
        cap: int,
        rate: msgrate.MessageRate,
    ):
        self.h, self.ws, self.ping, self.cap, self.rate = h, ws, ping, cap, rate
        self.user_id, self.username, self.ip = user_id, username, ip
        self.conn = h.connect(user_id, Transport.WS)
        self.delivery = Delivery(h, self.conn)
        self.readable = False
        self.watcher = get_hub().loop.io(ws.sock.fileno(), 1)  # 1: readable
        self.awaiting_pong = False
        self.reason = "client_gone"
        if ws.ws.connection is not None:  # the 101 is sent: frames only from here on
            ws.ws.handshake = _OPENED
        g.pop("_login_user", None)  # the user's ORM object: everything needed is copied above

    def send(self, payload: dict) -> None:
        """Write one JSON message."""
        self.ws.send(sse.json_text(payload))

    def send_events(self, batch: list[Event]) -> None:
        """Write the batch in one write; each event's frame is made once by the hub for every socket."""
        if batch:
            self.ws.sock.sendall(b"".join(e.framed("ws", _event_frame) for e in batch))

    def run(self) -> None:
        """Serve the socket until it closes, goes stale, or the hub ends it."""
        started = time.monotonic()
        audit("stream_open", user=self.username, transport=Transport.WS.value, ip=self.ip)
        self.watcher.start(self._on_readable)
        try:
            self._send_loop()
        except (simple_websocket.ConnectionClosed, OSError):
            pass
        finally:
            self.watcher.stop()
            self.watcher.close()
            self.h.disconnect(self.conn)
            audit(
                "stream_close",
                user=self.username,
                transport=Transport.WS.value,
                ip=self.ip,
                duration=round(time.monotonic() - started, 3),
                reason=self.reason,
            )

    def _on_readable(self) -> None:
        # Runs in the gevent hub: no blocking here. Stopped until drained, or the level-triggered
        # watcher would fire on every loop iteration while the session is busy elsewhere.
        self.watcher.stop()
        self.readable = True
        self.conn.wake()

    def _send_loop(self) -> None:
        # next() in a plain loop, not the loop() generator: one C frame less in the parked stack.
        while (item := self.delivery.next(self.ping, stay_open=True, drain=self._drain)) is not None:
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

    def _drain(self) -> None:
        """Read what the socket has (it is readable, so recv does not block) and act on it."""
        if not self.readable:
            return
        self.readable = False
        ws = self.ws
        try:
            data = ws.sock.recv(ws.receive_bytes)
            if not data:
                raise OSError("closed by peer")
            ws.ws.receive_data(data)
            ws.connected = ws._handle_events()  # close, ping and pong frames; messages to input_buffer
        except (OSError, LocalProtocolError):
            ws.connected = False
        while ws.input_buffer:
            if not self.rate.hit():
                self.send(
                    {
                        "type": "error",
                        "code": "rate_limited",
                        "message": f"More than {self.rate.limit} messages in {self.rate.per:g} s.",
                    }
                )
                self.reason = "rate_limited"
                self.conn.end("rate_limited")
                return
            self._handle(ws.input_buffer.pop(0))
        if not ws.connected:
            self.conn.end("client_gone")  # the peer closed: end now, not at the next ping
            return
        self.watcher.start(self._on_readable)

    def _handle(self, raw: str | bytes) -> None:
        # Every message the protocol knows has two levels ({"documents": [...]}); a message of
        # thousands of brackets within the 64 KiB cap made json.loads recurse past Python's limit,
        # and the RecursionError ended the socket with a trace in the log. Counted, not parsed.
        brackets = raw.count("[" if isinstance(raw, str) else b"[") + raw.count(
            "{" if isinstance(raw, str) else b"{"
        )
        if brackets > MAX_BRACKETS:
            self.send(
                {"type": "error", "code": "bad_message", "message": "The message is nested too deeply."}
            )
            return
        try:
            msg = json.loads(raw)
            kind = msg["type"]
        except (ValueError, TypeError, KeyError, RecursionError):
            self.send({"type": "error", "code": "bad_message", "message": "Send JSON with a 'type'."})
            return
        if kind == "pong":
            self.awaiting_pong = False
        elif kind == "ping":
            self.send({"type": "pong"})
        elif kind in ("subscribe", "unsubscribe"):
            ids = msg.get("documents")
            well_formed = isinstance(ids, list) and all(isinstance(x, str) for x in ids)
            if not well_formed or len(ids) > self.cap:
                self.send(
                    {
                        "type": "error",
                        "code": "bad_message",
                        "message": f"'documents' must be a list of at most {self.cap} ids.",
                    }
                )
            elif kind == "subscribe":
                self._subscribe(list(dict.fromkeys(ids)))
            else:
                for doc_id in ids:
                    self.delivery.stop(doc_id)
        else:
            self.send({"type": "error", "code": "bad_message", "message": f"Unknown type {kind!r}."})

    def _subscribe(self, ids: list[str]) -> None:
        if len(self.conn.subs) + len(ids) > self.cap:
            self.send(
                {
                    "type": "error",
                    "code": "too_many_documents",
                    "message": f"At most {self.cap} documents per connection.",
                }
            )
            return
        owned = documents.owned_among(ids, self.user_id)
        allowed = [d for d in ids if d in owned]
        denied = [d for d in ids if d not in owned]  # absent and not-yours look the same
        states = documents.progress_of_many(redis_conn(), [owned[d] for d in allowed])
        news = []
        for doc_id in allowed:
            doc = owned[doc_id]
            event = self.delivery.start(
                doc_id, doc.job_id, states[doc_id], seen=self.delivery.seen.get(doc_id, 0)
            )
            if event is not None:
                news.append(event)
        db.session.close()
        self.send_events(news)
        self.send({"type": "subscribed", "documents": allowed, "denied": denied})
