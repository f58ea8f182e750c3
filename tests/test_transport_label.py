"""A connection carries its Transport (what the flags judge) and its stats label apart: the
multiplexed SSE stream is counted as "sse-multi" and judged as SSE, and flags never see a label."""

from __future__ import annotations

import pytest

from livedoc.flags import RealtimeFlags, Transport
from livedoc.hub import StreamHub

SSE_MODE = RealtimeFlags(enabled=True, mode="sse", push=False, websocket=True)


def test_flags_judge_transports_only():
    assert [SSE_MODE.allows(t) for t in Transport] == [True, True, True, True]
    longpoll = RealtimeFlags(enabled=True, mode="longpoll", push=False, websocket=True)
    assert [longpoll.allows(t) for t in Transport] == [False, False, True, True]
    with pytest.raises(ValueError):
        SSE_MODE.allows("sse-multi")


def test_the_multiplexed_stream_counts_as_sse_multi_and_closes_as_sse(redis_conn, monkeypatch):
    hub = StreamHub(redis_conn, SSE_MODE, poll_interval=1.0, host_id="test-host")
    monkeypatch.setattr(hub, "_ensure_running", lambda: None)  # no poll loop: the test drives the hub
    multi = hub.connect(1, Transport.SSE, "sse-multi")
    single = hub.connect(1, Transport.SSE)
    ws = hub.connect(2, Transport.WS)
    poll = hub.connect(2, Transport.LONGPOLL)
    assert hub.snapshot()["connectionsByTransport"] == {"sse-multi": 1, "sse": 1, "ws": 1, "longpoll": 1}
    hub._apply_flags(RealtimeFlags(enabled=True, mode="longpoll", push=False, websocket=True))
    assert (multi.closed, single.closed, ws.closed, poll.closed) == ("mode", "mode", "mode", None)
    for conn in (multi, single, ws, poll):
        hub.disconnect(conn)
    assert hub.snapshot()["connectionsByTransport"] == {}
