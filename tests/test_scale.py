"""The stream hub across processes and hosts: shared stats, fan-out to every host, limits, metrics."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.live import api, sse_events
from tests.pdfgen import make_pdf
from tests.support import wait_for
from tests.support.streams import open_stream, upload

pytestmark = pytest.mark.live


def test_two_hosts_share_progress_and_stats(make_stack):
    stack = make_stack()
    stack.start_web()  # a second "host": another gunicorn on another port, same Redis
    admin = api(stack.user("ops", admin=True))
    reader = api(stack.user("reader"))
    body = upload(reader, stack.url(0))
    streams = [sse_events(open_stream(reader, stack.url(i), body)) for i in (0, 1)]
    firsts = [next(e for e in r if "event" in e) for r in streams]
    assert [f["id"] for f in firsts] == ["1", "1"]

    def both_hosts_counted(url):
        stats = admin.get(url + "/api/realtime/stats", timeout=5).json()
        ok = (
            stats["totalConnections"] == 2
            and len(stats["hosts"]) == 2
            and stats["connectionsByDocument"] == {body["id"]: 2}
            and stats["documentSubscriptions"] == 1
            and stats["connectionsByTransport"] == {"sse": 2}
        )
        return stats if ok else None

    for i in (0, 1):
        wait_for(lambda i=i: both_hosts_counted(stack.url(i)))

    stack.start_worker()
    for stream in streams:
        messages = list(stream)  # the rest of each stream, up to its terminal event
        assert messages[-1]["event"] == "complete", messages

    stats_url = stack.url(1) + "/api/realtime/stats"
    wait_for(lambda: admin.get(stats_url, timeout=5).json()["totalConnections"] == 0)


def test_vanished_clients_are_reaped(make_stack):
    stack = make_stack()
    admin = api(stack.user("ops2", admin=True))
    reader = api(stack.user("ghost"))
    body = upload(reader, stack.base_url)
    token = reader.headers["Authorization"]
    socks = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", stack.ports[0]), timeout=5)
        request = f"GET {body['events_url']} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n"
        sock.sendall(request.encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        socks.append(sock)
    stats_url = stack.base_url + "/api/realtime/stats"
    wait_for(lambda: admin.get(stats_url, timeout=5).json()["totalConnections"] == 3)
    for sock in socks:
        sock.close()  # vanish without a goodbye
    # The next ping (SSE_PING_INTERVAL=1 s) fails to write; the hub forgets the stream.
    wait_for(lambda: admin.get(stats_url, timeout=5).json()["totalConnections"] == 0, timeout=15)
    local = admin.get(stats_url, timeout=5).json()["local"]
    assert local["connectionsByDocument"] == {} and local["watchedJobs"] == 0


def test_open_stream_cap_per_user_answers_429(make_stack):
    stack = make_stack(MAX_STREAMS_PER_USER="2")
    reader = api(stack.user("greedy"))
    body = upload(reader, stack.base_url)
    held = [open_stream(reader, stack.base_url, body) for _ in range(2)]
    # The event readers are kept: a discarded one closes its response, and the server now notices a
    # closed socket at once (it would free the slot this test holds).
    readers = [sse_events(resp, until_terminal=False) for resp in held]
    for resp, events in zip(held, readers):
        assert resp.status_code == 200
        next(e for e in events if "event" in e)
    third = open_stream(reader, stack.base_url, body)
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "10"
    assert third.json()["error"]["code"] == "too_many_streams"
    held[0].close()
    wait_for(lambda: open_stream(reader, stack.base_url, body).status_code == 200)


def test_connection_attempts_are_rate_limited(make_stack):
    stack = make_stack(RATELIMIT_STREAM="3 per minute")
    reader = api(stack.user("hasty"))
    body = upload(reader, stack.base_url)
    codes = []
    for _ in range(4):
        resp = reader.get(stack.base_url + body["events_url"], timeout=5, stream=True)
        codes.append(resp.status_code)
        if resp.status_code == 429:
            assert int(resp.headers["Retry-After"]) > 0
            assert resp.json()["error"]["code"] == "rate_limited"
        resp.close()
    assert codes == [200, 200, 200, 429]


def test_status_requests_are_limited_to_one_per_window_per_viewer(make_stack):
    # Sized from the window: MAX_STREAMS_PER_USER viewers, each at most once per window (or poll).
    stack = make_stack(MAX_STREAMS_PER_USER="1", LONGPOLL_WINDOW_MS="30000", SSE_POLL_INTERVAL="30000")
    reader = api(stack.user("status-hasty"))
    body = upload(reader, stack.base_url)
    codes = [reader.get(stack.base_url + body["status_url"], timeout=5) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[-1].headers["Retry-After"]) > 0
    assert codes[-1].json()["error"]["code"] == "rate_limited"


def test_metrics_in_prometheus_format_for_admins(live):
    admin = api(live.user("metrics-admin", admin=True))
    reader = api(live.user("metrics-reader"))
    body = upload(reader, live.base_url)
    resp = open_stream(reader, live.base_url, body)
    assert [e for e in sse_events(resp) if "event" in e][-1]["event"] == "complete"
    text = admin.get(live.base_url + "/metrics", timeout=5)
    assert text.status_code == 200 and text.headers["Content-Type"].startswith("text/plain")
    for name in (
        "livedoc_open_streams",
        "livedoc_events_sent_total",
        "livedoc_save_to_send_seconds_bucket",
        "livedoc_hub_polls_total",
        "livedoc_redis_errors_total",
    ):
        assert name in text.text
    assert 'livedoc_events_sent_total{transport="sse"}' in text.text
    assert reader.get(live.base_url + "/metrics", timeout=5).status_code == 403
    assert requests.get(live.base_url + "/metrics", timeout=5).status_code == 401


def test_polling_alone_delivers_when_push_is_off(make_stack):
    stack = make_stack(REALTIME_PUSH="false")
    admin = api(stack.user("ops-nopush", admin=True))
    reader = api(stack.user("nopush"))
    body = upload(reader, stack.base_url, make_pdf([f"page {i}" for i in range(1, 13)]))
    stream = sse_events(open_stream(reader, stack.base_url, body))
    assert next(e for e in stream if "event" in e)["id"] == "1"
    stack.start_worker()
    events = [e for e in stream if "event" in e]
    assert events[-1]["event"] == "complete"
    metrics = admin.get(stack.base_url + "/metrics", timeout=5).text
    # Every event came from the hub's poll: no pub/sub message was read.
    assert "livedoc_push_messages_total 0.0" in metrics
    assert 'livedoc_events_sent_total{transport="sse"}' in metrics


def test_long_waits_end_on_the_hub_timer(make_stack):
    # A 2.5 s ping and a 3 s long-poll are long enough for the hub's timer wheel (livedoc.hub
    # TIMER_MIN), which replaces a gevent timeout per parked connection: each must still end on time,
    # never early and at most a tick (plus scheduling) late.
    stack = make_stack(SSE_PING_INTERVAL="2500")
    s = api(stack.user("timer"))
    body = upload(s, stack.base_url)  # no worker: the job stays queued, the stream stays quiet
    started = time.monotonic()
    stream = sse_events(open_stream(s, stack.base_url, body))
    first = next(e for e in stream if "event" in e)
    assert (first["event"], first["id"]) == ("progress", "1")
    pings = []
    for message in stream:
        assert message == {"comment": "ping"}, message
        pings.append(time.monotonic() - started)
        if len(pings) == 2:
            break
    assert 2.5 <= pings[0] < 4.0, pings
    assert 2.5 <= pings[1] - pings[0] < 3.5, pings
    t0 = time.monotonic()
    resp = s.get(stack.base_url + body["status_url"], params={"after": 1, "wait": 3}, timeout=10)
    waited = time.monotonic() - t0
    assert resp.status_code == 200 and resp.json()["seq"] == 1, resp.text
    assert 3.0 <= waited < 4.0, waited
