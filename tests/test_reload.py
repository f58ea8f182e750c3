"""A graceful reload (gunicorn HUP) costs a viewer one prompt reconnect, not two and a `retry:` wait.

Real gunicorn (gevent) and `rq worker`, with the deployed SSE_RETRY (3 s): the stopping worker's
streams tell EventSource to come back at once, and the stopping worker closes its idle kept-alive
connections instead of serving new streams on them (each would end at once and cost another retry).
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.live import api
from tests.support import wait_for
from tests.support.streams import Viewer, slow_pdf, upload

pytestmark = pytest.mark.live

RELOAD = {"SSE_RETRY": "3000", "RENDER_DPI": "300", "RATELIMIT_STREAM": "6000 per minute"}


def test_viewers_get_their_first_event_promptly_after_a_hup(make_stack):
    stack = make_stack(**RELOAD)
    web = stack.webs[0]
    stack.start_worker()
    token = stack.user("reloaded")
    s = api(token)
    body = upload(s, stack.base_url, slow_pdf(250))
    # A browser's EventSource has no read timeout of its own: a reconnect may wait in the listen
    # backlog while the new worker boots on a loaded machine.
    viewers = [
        Viewer(f"v{i}", token, stack.base_url, body["events_url"], deadline=120, read_timeout=30)
        for i in range(3)
    ]
    for v in viewers:
        v.start()
    wait_for(
        lambda: all(v.latest and v.latest["stage"] == "rendering" for v in viewers), 60, what="rendering"
    )
    ends = [len(v.stream_ends) for v in viewers]
    hup, hup_wall = time.monotonic(), time.time()
    web.send(signal.SIGHUP)
    wait_for(lambda: all(len(v.stream_ends) > n for v, n in zip(viewers, ends)), 10, 0.02, what="streams end")

    def first_after_reconnect(v: Viewer, n: int) -> float | None:
        # Arrival times are wall-clock, stream ends monotonic: both measured from the HUP.
        ended = v.stream_ends[n] - hup
        later = [t - hup_wall for t, _ in list(v.received) if t - hup_wall > ended]
        return min(later) if later else None

    wait_for(
        lambda: all(first_after_reconnect(v, n) is not None for v, n in zip(viewers, ends)),
        20,
        0.05,
        what="viewers receive events again",
    )
    firsts = [first_after_reconnect(v, n) for v, n in zip(viewers, ends)]
    assert [v.connects for v in viewers] == [2, 2, 2], "one reconnect each"
    for v in viewers:
        v.stopped.set()
    # Before: at least SSE_RETRY (3 s), and a second retry for a stream opened on the stopping worker.
    assert max(firsts) < 2.0, f"first event after the HUP came {[round(f, 2) for f in firsts]} s later"


def test_a_stopping_worker_closes_its_idle_kept_alive_connections(make_stack):
    stack = make_stack(**RELOAD)
    web = stack.webs[0]
    sock = socket.create_connection(("127.0.0.1", stack.ports[0]), timeout=10)
    sock.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" in head.lower()
    while b"</html>" not in head.lower():
        head += sock.recv(65536)
    started = time.monotonic()
    web.send(signal.SIGHUP)
    # Kept alive for `keepalive` (5 s) before; a browser's next request on it would reach the stopping
    # worker. Now the worker closes it as it stops.
    assert sock.recv(1) == b"", "closed without another byte"
    assert time.monotonic() - started < 3.0
    sock.close()
