"""A client that leaves releases its stream slot within seconds, not at the next failed ping.

A real gunicorn (gevent): streams whose sockets the client closes must stop counting against
MAX_STREAMS_PER_USER at once (the server sees the closed socket), whatever the ping interval.
"""

from __future__ import annotations

import socket

import pytest

from tests.live import api
from tests.support import wait_for
from tests.support.streams import open_stream, upload

pytestmark = pytest.mark.live

STREAMS = 15


def _bare_request(port: int, token: str, path: str) -> socket.socket:
    """A request on a bare socket that is left waiting (a stream, or a held long-poll)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return sock


def _open(admin, base: str) -> int:
    return admin.get(base + "/api/realtime/stats", timeout=5).json()["totalConnections"]


@pytest.mark.parametrize("kind", ["sse", "longpoll"])
def test_streams_of_clients_that_left_are_released_within_seconds(make_stack, kind):
    # No worker: the document stays queued and every stream or long-poll stays open.
    stack = make_stack(
        MAX_STREAMS_PER_USER=str(STREAMS), RATELIMIT_STREAM="6000 per minute", SSE_PING_INTERVAL="30000"
    )
    admin = api(stack.user("departed-ops", admin=True))
    token = stack.user("departed")
    s = api(token)
    base = stack.base_url
    body = upload(s, base)
    path = body["events_url"] if kind == "sse" else body["status_url"] + "?after=1&wait=25"
    socks = [_bare_request(stack.ports[0], token, path) for _ in range(STREAMS)]
    wait_for(lambda: _open(admin, base) == STREAMS, 10, 0.2, what=f"{STREAMS} streams counted")
    for sock in socks:
        sock.close()
    # Pings are 30 s apart: only noticing the closed sockets frees the slots this soon.
    wait_for(lambda: _open(admin, base) == 0, 5, 0.2, what="the departed clients' streams released")
    again = [open_stream(s, base, body) for _ in range(STREAMS)]
    assert [r.status_code for r in again] == [200] * STREAMS
    for r in again:
        r.close()
