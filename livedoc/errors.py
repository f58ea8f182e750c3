"""livedoc's web errors, and the one handler that turns every error into JSON or a readable page.

API routes (under /api/) answer ``{"error": {"code", "message"}}``; HTML routes render
templates/error.html. Nothing a client sees carries a path or a stack trace. The error classes live
in livedoc/http_errors.py, without Flask, so the shared layer raises them without loading Flask.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, jsonify, render_template, request
from markupsafe import escape
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseDown
from sqlalchemy.exc import TimeoutError as DatabasePoolTimeout
from werkzeug.exceptions import HTTPException

from livedoc.extensions import limiter
from livedoc.http_errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    LivedocError,
    NotFound,
    QuotaExceeded,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedType,
)

# The error classes live in livedoc/http_errors.py (no Flask); they stay importable from here.
__all__ = [
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "LivedocError",
    "NotFound",
    "QuotaExceeded",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedType",
    "error_response",
    "register_error_handlers",
    "wants_json",
]

log = logging.getLogger("livedoc")


def wants_json() -> bool:
    """True for API routes, which always answer JSON."""
    return request.path.startswith("/api/") or request.path == "/metrics"


def error_response(
    status: int, code: str, message: str, headers: dict | None = None, extra: dict | None = None
) -> Response:
    """The response for an error: JSON on API routes (with `extra` fields), a page elsewhere."""
    if wants_json():
        resp = jsonify({"error": {"code": code, "message": message, **(extra or {})}})
    else:
        resp = Response(_error_page(status, message), mimetype="text/html")
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _error_page(status: int, message: str) -> str:
    try:
        return render_template("error.html", status=status, message=message)
    except Exception:  # noqa: BLE001
        # The page's frame needs the user, hence the database: a page that cannot be rendered
        # still answers with its status and headers, not a bare 500 from Flask.
        log.warning("error page for %s not rendered", status, exc_info=True)
        return (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>Error {status} · livedoc</title>"
            f"<h1>Error {status}</h1><p>{escape(message)}</p></html>"
        )


def _forget_user() -> None:
    # The database is down: the page must not load the session's user from it to draw its menu.
    from livedoc.extensions import login_manager

    g._login_user = login_manager.anonymous_user()


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_type",
    429: "rate_limited",
}


def _limit_reset_in() -> int:
    """Seconds until the rate limit that was just hit lets requests through again."""
    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, int(current.reset_at - time.time()) + 1)


def register_error_handlers(app: Flask) -> None:
    """Install the handlers on the app."""

    @app.errorhandler(LivedocError)
    def _livedoc(exc: LivedocError):
        return error_response(exc.status, exc.code, exc.message, exc.headers, getattr(exc, "extra", None))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        message = exc.description if status < 500 else "Something went wrong on our side."
        if status == 413:
            too_big = (request.content_length or 0) > (app.config["MAX_CONTENT_LENGTH"] or 0)
            message = (
                f"The file is larger than the {app.config['MAX_UPLOAD_MB']} MB limit."
                if too_big
                else "The form has too many parts or too large a field."
            )
        elif status == 404:
            message = "Not found."
        headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
        if status == 429:
            from livedoc.audit import audit  # audit needs a request context; errors load before it

            audit("limit_hit", limit="rate", path=request.path)
            headers["Retry-After"] = str(_limit_reset_in())
            message = "Too many requests; try again later."
        return error_response(status, _HTTP_CODES.get(status, "error"), message, headers)

    @app.errorhandler(RedisError)
    def _redis(exc: RedisError):
        log.warning("redis unavailable: %s", exc.__class__.__name__)
        err = Unavailable()
        return error_response(err.status, err.code, err.message, err.headers)

    @app.errorhandler(DatabaseDown)
    @app.errorhandler(DatabasePoolTimeout)
    def _database(exc: Exception):
        # Down, restarting, or every pooled connection busy for DB_POOL_TIMEOUT: a moment's wait helps.
        log.warning("database unavailable: %s", exc.__class__.__name__)
        _forget_user()
        err = Unavailable()
        return error_response(err.status, err.code, err.message, err.headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # The last line of defence: log the trace for operators, tell the client nothing of it.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "Something went wrong on our side.")
