"""Operators' pages: real-time flags, live stats, and the RQ dashboard at /rq (admins only)."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import wraps

import rq_dashboard
from flask import Blueprint, Flask, Response, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from rq.exceptions import NoSuchJobError
from rq_dashboard import web as rq_web
from werkzeug.exceptions import MethodNotAllowed

from livedoc import flags, fleet, hub, jobs
from livedoc.appctx import realtime_flags, redis_conn
from livedoc.audit import audit
from livedoc.errors import Forbidden, LivedocError, NotFound, error_response
from livedoc.extensions import login_manager

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
    workers = {
        "alive": fleet.workers_alive(redis_conn(), queue_name),
        "queued": fleet.queue_length(redis_conn(), queue_name),
        "queue": queue_name,
    }
    return render_template(
        "admin/index.html",
        flags=realtime_flags(),
        stats=hub.collect_stats(redis_conn()),
        choices=flags.CHOICES,
        workers=workers,
    )


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


# The dashboard's pages render their rows with underscore templates, which compile through
# `new Function`: that needs 'unsafe-eval'. Its page logic is one inline <script> per page, allowed
# by its hash (computed per response, so only the script the dashboard itself rendered runs), not by
# 'unsafe-inline'. Its markup has style="" attributes, hence 'unsafe-inline' for styles only. It talks
# to its own JSON endpoints (connect-src 'self') and loads nothing from elsewhere.
RQ_DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval' {hashes}; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)
# Inline scripts that run: no src, and not the dashboard's `type="text/template"` row templates.
_INLINE_SCRIPT = re.compile(
    rb"<script(?![^>]*\b(?:src=|type=\"text/template\"))[^>]*>(.*?)</script>", re.S | re.I
)

# The dashboard's routes that change state; its JS sends them all as POST.
_RQ_WRITES = {
    "rq_dashboard.requeue_all",
    "rq_dashboard.requeue_job_view",
    "rq_dashboard.delete_job_view",
    "rq_dashboard.empty_queue",
    "rq_dashboard.compact_queue",
}


def dashboard_csp(body: bytes) -> str:
    """The CSP for one rq-dashboard response: its own inline scripts by hash, plus 'unsafe-eval'."""
    hashes = sorted(
        {
            "'sha256-" + base64.b64encode(hashlib.sha256(m).digest()).decode() + "'"
            for m in _INLINE_SCRIPT.findall(body)
        }
    )
    return RQ_DASHBOARD_CSP.format(hashes=" ".join(hashes)).replace("  ", " ")


def same_origin() -> bool:
    """True when the browser says the request comes from a page of this site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    return origin is not None and origin.rstrip("/") == request.host_url.rstrip("/")


# What rq-dashboard 0.9 reads from its URLs without checking: a bad value there was a 500.
_RQ_REGISTRIES = frozenset({"queued", "failed", "deferred", "started", "finished", "scheduled", "canceled"})
_RQ_NUMBER = re.compile(r"-?[0-9]{1,9}")


def _check_rq_dashboard_url(app: Flask) -> None:
    """Raise NotFound for a dashboard URL its views would fail on: an instance number beyond the
    configured Redis URLs, an unknown registry, a page or page size that is not a number (or 0)."""
    args = request.view_args or {}
    instance = args.get("instance_number")
    if instance is not None and instance >= len(app.config["RQ_DASHBOARD_REDIS_URL"]):
        raise NotFound("No such page of the RQ dashboard.")
    registry = args.get("registry_name")
    if registry is not None and registry not in _RQ_REGISTRIES:
        raise NotFound("No such registry.")
    for name in ("per_page", "page"):
        value = args.get(name)
        # A negative page size is the dashboard's own "all of them"; 0 would divide by zero.
        if value is not None and (
            not _RQ_NUMBER.fullmatch(str(value)) or (name == "per_page" and int(value) == 0)
        ):
            raise NotFound("No such page of the RQ dashboard.")


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
        _check_rq_dashboard_url(app)
        if request.endpoint in _RQ_WRITES:
            # rq-dashboard accepts GET on /requeue/<queue>: a link or an <img> elsewhere must not
            # requeue jobs. Its writes carry no CSRF token, so they must come from its own pages.
            if request.method != "POST":
                raise MethodNotAllowed(valid_methods=["POST"])
            if not same_origin():
                audit("access_denied", page=request.path, reason="cross_origin")
                raise Forbidden("Cross-site requests to the RQ dashboard are refused.", code="cross_origin")
        return None

    @app.errorhandler(NoSuchJobError)
    def job_not_found(_exc):
        # The dashboard fetches jobs by the id in its URL; an expired or made-up one is a 404.
        err = NotFound("No such job (it may have expired).")
        return error_response(err.status, err.code, err.message)

    @app.after_request
    def rq_dashboard_csp(resp: Response) -> Response:
        if request.blueprint == "rq_dashboard" and resp.mimetype == "text/html" and not resp.is_streamed:
            resp.headers["Content-Security-Policy"] = dashboard_csp(resp.get_data())
        return resp
