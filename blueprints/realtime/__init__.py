"""Real-time transports, one thin module each over the one delivery loop (livedoc.delivery):
SSE for one document or many (events), long-poll and poll (status), WebSocket (websocket), and the
connection stats (stats). None of them holds a Redis or database connection while it waits: the
process's stream hub (livedoc.hub) reads Redis for all of them.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from flask_login import current_user

from livedoc import metrics
from livedoc.appctx import stream_hub
from livedoc.audit import audit
from livedoc.errors import LivedocError, TooManyRequests
from livedoc.extensions import limiter
from livedoc.flags import RealtimeFlags

bp = Blueprint("realtime", __name__)

MAX_SEQ = 2**53


def int_arg(name: str, default: int, upper: int) -> int:
    """A whole-number query argument from 0 to upper (400 otherwise)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not raw.isascii() or not raw.isdigit() or int(raw) > upper:
        raise LivedocError(f"'{name}' must be a whole number from 0 to {upper}.", code="bad_parameter")
    return int(raw)


def wait_arg(limit: int) -> float:
    """The `wait` query argument in seconds, at most `limit` (400 when it is not a number)."""
    raw = request.args.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw) if len(raw) <= 20 else -1.0
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise LivedocError(f"'wait' must be a number of seconds from 0 to {limit}.", code="bad_parameter")
    return min(value, float(limit))  # longer waits are served as the longest allowed one


def _stream_limit() -> str:
    return current_app.config["RATELIMIT_STREAM"]


def user_key() -> str:
    """The rate-limit key of the logged-in user (limits per user, beside those per address)."""
    return f"user:{current_user.get_id()}"


def admit(transport: str) -> None:
    """Refuse a new stream when the user already holds MAX_STREAMS_PER_USER on all hosts."""
    cap = current_app.config["MAX_STREAMS_PER_USER"]
    if stream_hub().user_streams(current_user.id) >= cap:
        metrics.REJECTED.labels("too_many_streams").inc()
        audit("limit_hit", limit="streams_per_user", transport=transport, cap=cap)
        raise TooManyRequests(
            f"You have {cap} live connections open already; close a tab.",
            code="too_many_streams",
            retry_after=10,
        )


# Connection attempts are limited per IP and per user (Redis storage: shared by all hosts).
stream_limits = [limiter.limit(_stream_limit), limiter.limit(_stream_limit, key_func=user_key)]


def limited(view):
    """Apply both stream connection limits to a view."""
    for limit in stream_limits:
        view = limit(view)
    return view


def fall_back(flags: RealtimeFlags) -> Response:
    """204: by the SSE standard the browser stops reconnecting; the header names what to use instead."""
    return Response(status=204, headers={"X-Livedoc-Mode": flags.transport})


from blueprints.realtime import events, stats, status, websocket  # noqa: E402,F401  (they register routes)
