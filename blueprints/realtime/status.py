"""Long-poll and poll: `GET /api/documents/<id>/status?after=<seq>&wait=<s>`.

A long-poll answers one change *window* (LONGPOLL_WINDOW_MS) after the first news, with the newest
state by then: a conversion saving twenty times a second costs its viewer one request per window,
and the status limit is sized from that window, so a viewer never meets a 429 of its own making.
"""

from __future__ import annotations

import time

from flask import current_app, jsonify
from flask_login import current_user, login_required

from blueprints.realtime.shared import (
    MAX_SEQ,
    admit,
    bp,
    int_arg,
    peer_socket,
    user_key,
    wait_arg,
    watch_peer,
)
from livedoc import documents
from livedoc.appctx import realtime_flags, redis_conn, stream_hub
from livedoc.delivery import Delivery
from livedoc.extensions import db, limiter
from livedoc.flags import Transport
from livedoc.progress import is_terminal


def _status_limit() -> str:
    # Every viewer a user may hold open (MAX_STREAMS_PER_USER), each asking at most once per window
    # (or per poll interval, which is longer): the user's own normal polling stays under it.
    cfg = current_app.config
    per_viewer = 60_000 // max(1, min(cfg["LONGPOLL_WINDOW_MS"], cfg["SSE_POLL_INTERVAL"]))
    return f"{cfg['MAX_STREAMS_PER_USER'] * max(1, per_viewer)} per minute"


@bp.route("/api/documents/<doc_id>/status")
@login_required
@limiter.limit(_status_limit)
@limiter.limit(_status_limit, key_func=user_key)
def status(doc_id: str):
    """Poll (no `wait`) or long-poll (`after`, `wait`) a document's progress."""
    cfg = current_app.config
    after = int_arg("after", -1, MAX_SEQ)
    wait = wait_arg(cfg["LONGPOLL_MAX_WAIT"])
    doc = documents.get_owned(doc_id, current_user)
    flags = realtime_flags()
    prog = documents.current_progress(redis_conn(), doc)
    body = documents.status_body(doc, prog)
    # In poll mode (or with real-time off) `wait` is ignored: a rollback turns long-polls to polls.
    changed = prog["seq"] > after or is_terminal(prog) or doc.job_id is None
    # A follower's next long-poll (after > 0) that finds news already still gathers for one window:
    # saves made between an answer and the next request would otherwise cost a second request.
    following = after > 0 and not is_terminal(prog) and doc.job_id is not None
    if wait > 0 and flags.allows(Transport.LONGPOLL) and (not changed or following):
        admit(Transport.LONGPOLL)
        doc_id, job_id, user_id = doc.id, doc.job_id, current_user.id
        db.session.close()  # do not hold a database connection while parked
        h = stream_hub()
        conn = h.connect(user_id, Transport.LONGPOLL)
        unwatch = watch_peer(peer_socket(), conn)
        try:
            delivery = Delivery(h, conn)
            delivery.start(doc_id, job_id, prog, seen=prog["seq"])
            delivery.seen[doc_id] = after  # answer with the first state newer than the caller's
            deadline = time.monotonic() + wait
            window = cfg["LONGPOLL_WINDOW_MS"] / 1000
            # next(), not loop(): loop() keeps the deadline it was given, so the window would not shorten it.
            while (item := delivery.next(wait, deadline)) is not None:
                if not isinstance(item, list):
                    break  # the wait ran out, or the hub closed the connection: answer as it stands
                body = documents.status_body_of(doc_id, item[-1].progress)
                if is_terminal(item[-1].progress):
                    break
                # News: gather what else comes within the window, then answer with the newest.
                deadline = min(deadline, time.monotonic() + window)
        finally:
            unwatch()
            h.disconnect(conn)
        flags = h.flags
    resp = jsonify(body)
    resp.headers["X-Livedoc-Mode"] = flags.transport
    resp.headers["Cache-Control"] = "no-store"
    return resp
