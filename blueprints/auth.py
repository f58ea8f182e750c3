"""Log in and log out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required, logout_user

from livedoc import documents, quotas, sessions
from livedoc.appctx import redis_conn
from livedoc.audit import audit
from livedoc.extensions import db, limiter

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    # Only same-site paths: an absolute URL here would make the login page an open redirect.
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("documents.index")


def _login_name_key() -> str:
    # Per account, whichever addresses the guesses come from.
    return "login-user:" + request.form.get("username", "")[:64].lower()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_LOGIN"], methods=["POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_LOGIN_USER"], methods=["POST"], key_func=_login_name_key)
def login():
    """The login page."""
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    error = None
    if request.method == "POST":
        username = request.form.get("username", "")[:64]
        password = request.form.get("password", "")[:256]
        user = sessions.authenticate(username, password)
        if user is not None:
            sessions.start(user)
            audit("login", user=user.username, result="ok")
            return redirect(_safe_next(request.args.get("next")))
        audit("login", user=username, result="failed")
        error = "Wrong user name or password."
    return render_template("auth/login.html", error=error), 401 if error else 200


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """End the session, and every other session of this user on every host."""
    audit("logout")
    sessions.end_all(current_user)
    db.session.commit()
    logout_user()
    flash("You are logged out.")
    return redirect(url_for("auth.login"))


@bp.route("/api/me")
@login_required
def me():
    """The caller: name, admin flag, and usage against each quota."""
    cfg = current_app.config
    documents.settle_unfinished(redis_conn(), current_user, cfg["MAX_CONVERSIONS_PER_USER"])
    return jsonify(
        {
            "username": current_user.username,
            "is_admin": bool(current_user.is_admin),
            "usage": quotas.report(quotas.usage(current_user), cfg),
        }
    )
