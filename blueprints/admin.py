"""Operators' pages: real-time flags, live stats, and the RQ dashboard at /rq (admins only)."""
from __future__ import annotations

from functools import wraps

import rq_dashboard
from flask import Blueprint, Flask, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from rq_dashboard import web as rq_web

from livedoc import flags, fleet, jobs
from livedoc import hub as hubmod
from livedoc.audit import audit
from livedoc.errors import Forbidden, LivedocError
from livedoc.extensions import login_manager
from livedoc.web import realtime_flags, redis_conn

bp = Blueprint("admin", __name__, url_prefix="/admin")


def admin_required(view):
    """Log in first, then be an admin (403 otherwise)."""

    @wraps(view)
    @login_required
    def wrapped(*args, **kwargs):
        if not current_user.is_admin:
            audit("access_denied", page=request.path)
            raise Forbidden("Only administrators can open this page.")
        return view(*args, **kwargs)

    return wrapped


@bp.route("/")
@admin_required
def index():
    """Flags, stats, conversion workers, and a link to the RQ dashboard."""
    queue_name = current_app.config["QUEUE_NAME"]
    workers = {"alive": fleet.workers_alive(redis_conn(), queue_name),
               "queued": fleet.queue_length(redis_conn(), queue_name), "queue": queue_name}
    return render_template("admin/index.html", flags=realtime_flags(),
                           stats=hubmod.collect_stats(redis_conn()), choices=flags.CHOICES, workers=workers)


@bp.route("/realtime", methods=["POST"])
@admin_required
def set_realtime():
    """Switch the real-time mode, or the WebSocket and push switches, on every host (no restart)."""
    if request.form.get("switches"):
        websocket, push = request.form.get("websocket") == "on", request.form.get("push") == "on"
        flags.set_override(redis_conn(), websocket=websocket, push=push)
        audit("realtime_flags", websocket=websocket, push=push)
        flash(f"WebSocket {'on' if websocket else 'off'}, push {'on' if push else 'off'}.")
        return redirect(url_for("admin.index"), code=303)
    mode = request.form.get("mode", "")
    if mode == "default":
        flags.clear_override(redis_conn())
    elif mode in flags.CHOICES:
        flags.set_override(redis_conn(), mode=mode)
    else:
        raise LivedocError("Unknown mode.", code="bad_mode")
    audit("realtime_flags", mode=mode)
    flash(f"Real-time mode set to {mode}.")
    return redirect(url_for("admin.index"), code=303)


def mount_rq_dashboard(app: Flask) -> None:
    """Serve rq-dashboard at /rq behind our admin check (it has no auth of its own)."""
    rq_web.config.serializer = jobs.SERIALIZER  # RQ's default, as the dashboard expects
    rq_web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")

    @app.before_request
    def guard_rq_dashboard():
        if request.blueprint != "rq_dashboard":
            return None
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        if not current_user.is_admin:
            audit("access_denied", page="/rq")
            raise Forbidden("Only administrators can open the RQ dashboard.")
        return None

