"""Long-poll and poll: `GET /api/documents/<id>/status?after=<seq>&wait=<s>`."""

from __future__ import annotations

import time

from flask import current_app, jsonify
from flask_login import current_user, login_required

from blueprints.realtime import MAX_SEQ, admit, bp, int_arg, limited, wait_arg
from livedoc import documents
from livedoc.appctx import realtime_flags, redis_conn, stream_hub
from livedoc.delivery import Delivery
from livedoc.extensions import db
from livedoc.flags import Transport
from livedoc.progress import is_terminal


@bp.route("/api/documents/<doc_id>/status")
@login_required
@limited
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
    if wait > 0 and flags.allows(Transport.LONGPOLL) and not changed:
        admit(Transport.LONGPOLL)
        doc_id, job_id, user_id = doc.id, doc.job_id, current_user.id
        db.session.close()  # do not hold a database connection while parked
        h = stream_hub()
        conn = h.connect(user_id, Transport.LONGPOLL)
        try:
            delivery = Delivery(h, conn)
            delivery.start(doc_id, job_id, prog, seen=prog["seq"])
            delivery.seen[doc_id] = after  # answer with the first state newer than the caller's
            for item in delivery.loop(ping=wait, deadline=time.monotonic() + wait):
                if isinstance(item, list):
                    body = documents.status_body_of(doc_id, item[-1].progress)
                break
        finally:
            h.disconnect(conn)
        flags = h.flags
    resp = jsonify(body)
    resp.headers["X-Livedoc-Mode"] = flags.transport
    resp.headers["Cache-Control"] = "no-store"
    return resp
