"""SSE: one document's progress (`/api/documents/<id>/events`), or many documents' (`/api/events`)."""

from __future__ import annotations

import random
import socket
import time

from flask import Response, current_app, request
from flask_login import current_user, login_required

from blueprints.realtime.shared import admit, bp, fall_back, limited, peer_socket, watch_peer
from livedoc import documents, sse
from livedoc.appctx import realtime_flags, redis_conn, stream_hub
from livedoc.audit import audit
from livedoc.delivery import PING, Closed, Delivery, Event
from livedoc.errors import LivedocError, NotFound
from livedoc.extensions import db
from livedoc.flags import Transport
from livedoc.hub import VANISHED, StreamHub
from livedoc.progress import is_terminal

SINGLE, MULTI = "sse", "sse-multi"  # their labels in the stats; both are the SSE transport
# The `retry:` of a stream ended because its worker stops: a reconnect within this many ms.
SHUTDOWN_RETRY_MS = (50, 1000)


@bp.route("/api/documents/<doc_id>/events")
@login_required
@limited
def events(doc_id: str):
    """SSE stream of a document's progress; 204 when SSE is off, so clients fall back."""
    doc = documents.get_owned(doc_id, current_user)
    flags = realtime_flags()
    if not flags.allows(Transport.SSE):
        return fall_back(flags)
    current = documents.current_progress(redis_conn(), doc)
    last = sse.parse_last_event_id(request.headers.get("Last-Event-ID"))
    if is_terminal(current) and last >= current["seq"]:
        return _ended()
    return _open([(doc.id, doc.job_id, current, last)], multi=False)


@bp.route("/api/events")
@login_required
@limited
def events_multi():
    """One SSE stream for many documents (`?docs=id,id,...`, or every unfinished one of the user)."""
    flags = realtime_flags()
    if not flags.allows(Transport.SSE):
        return fall_back(flags)
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
        return fall_back(flags)
    states = documents.progress_of_many(redis_conn(), docs)
    cursor = request.headers.get("Last-Event-ID") or request.args.get("cursor")
    lasts = sse.parse_cursor(cursor, [d.id for d in docs])
    if all(is_terminal(states[d.id]) and lasts[d.id] >= states[d.id]["seq"] for d in docs):
        return _ended()
    return _open([(d.id, d.job_id, states[d.id], lasts[d.id]) for d in docs], multi=True)


def _ended() -> Response:
    """204 to a reconnect that has seen the terminal event already: by the SSE standard the only
    answer that stops an EventSource (a 200 that ends at once makes it reconnect every `retry`)."""
    return Response(status=204)


def _open(items: list[tuple], multi: bool) -> Response:
    """Admit and start an SSE response over (document id, job id, current progress, last seen seq)."""
    user_id, username = current_user.id, current_user.username
    db.session.close()  # the stream outlives the request: give the database connection back now
    name = MULTI if multi else SINGLE
    if any(not is_terminal(current) and job_id for _, job_id, current, _ in items):
        admit(name)
    cfg = current_app.config
    stream = _stream(
        stream_hub(),
        items,
        multi,
        user_id,
        username,
        cfg["SSE_PING_INTERVAL"] / 1000,
        cfg["SSE_RETRY"],
        request.remote_addr,
        peer_socket(),
    )
    # direct_passthrough: the WSGI server iterates this generator itself, without Werkzeug's
    # ClosingIterator and encoding generator around it; each is a C frame more in every parked
    # stream's saved stack, and the ClosingIterator would keep this Response alive for the stream's life.
    return Response(
        stream,
        mimetype="text/event-stream",
        direct_passthrough=True,
        headers={
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "X-Livedoc-Mode": Transport.SSE.value,
        },
    )


def _stream(
    h: StreamHub,
    items: list[tuple],
    multi: bool,
    user_id: int,
    username: str,
    ping: float,
    retry_ms: int,
    ip: str | None,
    peer: socket.socket | None,
):
    name = MULTI if multi else SINGLE
    started = time.monotonic()
    reason = "client_gone"
    conn = delivery = None
    unwatch = None
    audit("stream_open", user=username, document=",".join(i[0] for i in items), transport=name, ip=ip)
    try:
        yield sse.retry(retry_ms).encode()
        conn = h.connect(user_id, Transport.SSE, name)
        unwatch = watch_peer(peer, conn)
        delivery = Delivery(h, conn)
        news = [e for e in (delivery.start(*item) for item in items) if e is not None]
        items.clear()  # the hub holds what is current from here on: keep no copy per stream
        if news:
            out = _frame(news, delivery, multi)
            news = None  # nor the opening progress (a dict per document) while parked
            yield out
        while True:
            # Nothing of the last item stays referenced while parked in next().
            out = item = None
            item = delivery.next(ping)
            if item is None:
                break
            if item is PING:
                out = _PING
            elif isinstance(item, Closed):
                if item.mode:
                    yield sse.message({"mode": item.mode}, event="mode").encode()
                elif item.reason in ("shutdown", VANISHED):
                    # EventSource reconnects by itself, with its Last-Event-ID, to a live worker (or
                    # to the document's new job): at once rather than after SSE_RETRY, spread so a
                    # crowd does not arrive together.
                    yield sse.retry(random.randint(*SHUTDOWN_RETRY_MS)).encode()
                reason = item.reason
                return
            else:
                out = _frame(item, delivery, multi)
            yield out
        reason = "terminal"
    finally:
        # Runs when the stream ends, when a write to a vanished client fails, and on shutdown.
        if unwatch is not None:
            unwatch()
        if conn is not None:
            h.disconnect(conn)
        names = ",".join(delivery.seen if delivery is not None else (i[0] for i in items))
        audit(
            "stream_close",
            user=username,
            document=names,
            transport=name,
            ip=ip,
            duration=round(time.monotonic() - started, 3),
            reason=reason,
        )


_PING = sse.comment("ping").encode()


def _single(e: Event) -> bytes:
    return sse.message(e.encoded, event=e.kind, id=e.progress["seq"]).encode()


def _multi_data(e: Event) -> bytes:
    return f'data: {{"document_id":"{e.doc_id}",{e.encoded[1:]}\n\n'.encode()


def _frame(batch: list[Event], delivery: Delivery, multi: bool) -> bytes:
    """One write for everything a batch holds; what every watcher sends alike is encoded once."""
    if not multi:
        return b"".join(e.framed("sse", _single) for e in batch)
    # Each event names its document; its id is the cursor over all of them as of that event, so a
    # stream cut inside a batch resumes with the events after the cut. Only that line is this
    # connection's own: the data line is the hub's, shared by every stream watching the document.
    state = {**delivery.seen, **{e.doc_id: e.before for e in batch}}
    order = sorted(state)  # once per batch, not per event
    out = []
    for e in batch:
        state[e.doc_id] = e.progress["seq"]
        out.append(f"event: {e.kind}\nid: {sse.encode_cursor(state, order)}\n".encode())
        out.append(e.framed("sse-multi", _multi_data))
    return b"".join(out)
