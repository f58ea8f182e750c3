"""What every real-time transport's views share: the blueprint, query arguments, admission and
connection limits, watching the client's socket, and the answer that names another transport.

Its own module, not the package's __init__, so that the transport modules import it without the
package and its views importing each other.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from flask import Blueprint, Response, current_app, request
from flask_login import current_user
from gevent import get_hub

from livedoc import metrics
from livedoc.appctx import stream_hub
from livedoc.audit import audit
from livedoc.errors import LivedocError, TooManyRequests
from livedoc.extensions import limiter
from livedoc.flags import RealtimeFlags
from livedoc.hub import Connection

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


def peer_socket() -> socket.socket | None:
    """The client's socket under gunicorn (None elsewhere, e.g. the test client)."""
    return request.environ.get("gunicorn.socket")


def watch_peer(sock: socket.socket | None, conn: Connection) -> Callable[[], None]:
    """End `conn` as soon as its client closes the socket; returns what stops the watching.

    A parked stream writes only every SSE_PING_INTERVAL, and a write to a departed client fails only
    on the second try: without this its slot (MAX_STREAMS_PER_USER) stayed taken for a minute. The
    request has been read whole, so the socket turns readable only when the peer closes it (or
    pipelines a request, which this leaves for the server to read)."""
    if sock is None:
        return _nothing
    fd = sock.fileno()
    watcher = get_hub().loop.io(fd, 1)  # 1: readable

    def readable() -> None:
        # Runs in the gevent hub, so nothing here may wait: a peek on a borrowed, non-owning socket.
        peek = socket.socket(fileno=fd)
        try:
            gone = not peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            gone = True  # reset by the peer
        finally:
            peek.detach()
        watcher.stop()
        if gone:
            conn.end("client_gone")

    watcher.start(readable)

    def stop() -> None:
        watcher.stop()
        watcher.close()

    return stop


def _nothing() -> None:
    return None


def fall_back(flags: RealtimeFlags) -> Response:
    """204: by the SSE standard the browser stops reconnecting; the header names what to use instead."""
    return Response(status=204, headers={"X-Livedoc-Mode": flags.transport})
