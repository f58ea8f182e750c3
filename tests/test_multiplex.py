"""One connection for many documents: the multiplexed SSE stream and the WebSocket transport."""

from __future__ import annotations

import gc
import json
import time
import warnings

import pytest
import requests
import simple_websocket

from livedoc import flags, sse
from livedoc.redis_client import connect
from tests.live import api, sse_events
from tests.pdfgen import make_pdf
from tests.support import wait_for
from tests.support.streams import poll_until_terminal, upload

PDF = make_pdf(["one", "two", "three", "four"])


def test_cursor_round_trip_and_ambiguity():
    a, b = "ab12cd34" + "0" * 24, "ef56ab78" + "1" * 24
    cursor = sse.encode_cursor({a: 3, b: 12})
    assert cursor == "ab12cd34:3,ef56ab78:12"
    assert sse.parse_cursor(cursor, [a, b]) == {a: 3, b: 12}
    twin = "ab12cd34" + "f" * 24  # same prefix: ambiguous, so both start over
    assert sse.parse_cursor(cursor, [a, twin]) == {a: 0, twin: 0}
    for junk in (None, "", "zz", "ab12cd34:x", "ab12cd34:-1", "é" * 10, "a:1" * 5000):
        assert sse.parse_cursor(junk, [a]) == {a: 0}


@pytest.mark.live
def test_one_stream_carries_many_documents_and_resumes_all(make_stack):
    stack = make_stack()
    admin = api(stack.user("ops", admin=True))
    s = api(stack.user("many"))
    base = stack.base_url
    bodies = [upload(s, base, PDF) for _ in range(3)]
    ids = [b["id"] for b in bodies]
    resp = s.get(f"{base}/api/events?docs={','.join(ids)}", stream=True, timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    stream = sse_events(resp, until_terminal=False)
    assert next(stream) == {"retry": "500"}
    first = [next(stream) for _ in range(3)]
    assert sorted(json.loads(m["data"])["document_id"] for m in first) == sorted(ids)
    assert all(m["event"] == "progress" for m in first)
    assert sse.parse_cursor(first[-1]["id"], ids) == dict.fromkeys(ids, 1)

    stats = wait_for(
        lambda: (lambda st: st if st["connectionsByTransport"] == {"sse-multi": 1} else None)(
            admin.get(base + "/api/realtime/stats", timeout=5).json()
        )
    )
    assert stats["totalConnections"] == 1 and stats["connectionsByDocument"] == dict.fromkeys(ids, 1)
    resp.close()  # a forced disconnect while everything is still queued

    stack.start_worker()
    finals = {b["id"]: poll_until_terminal(s, base, b) for b in bodies}
    resumed = s.get(
        f"{base}/api/events?docs={','.join(ids)}",
        headers={"Last-Event-ID": first[-1]["id"]},
        stream=True,
        timeout=30,
    )
    events = [m for m in sse_events(resumed, until_terminal=False) if "event" in m]
    # Every document's final state, once each, and then the stream ends by itself.
    got = {json.loads(m["data"])["document_id"]: json.loads(m["data"]) for m in events}
    assert [m["event"] for m in events] == ["complete"] * 3
    assert {d: (p["state"], p["seq"]) for d, p in got.items()} == {
        d: ("complete", f["seq"]) for d, f in finals.items()
    }
    assert sse.parse_cursor(events[-1]["id"], ids) == {d: f["seq"] for d, f in finals.items()}

    again = s.get(
        f"{base}/api/events?docs={','.join(ids)}",
        headers={"Last-Event-ID": events[-1]["id"]},
        stream=True,
        timeout=30,
    )
    assert [m for m in sse_events(again, until_terminal=False) if "event" in m] == []


@pytest.mark.live
def test_multiplexed_stream_checks_every_document(make_stack):
    stack = make_stack()
    alice, bob = api(stack.user("alice-m")), api(stack.user("bob-m"))
    base = stack.base_url
    mine = upload(alice, base, PDF)["id"]
    theirs = upload(bob, base, PDF)["id"]
    not_yours = alice.get(f"{base}/api/events?docs={mine},{theirs}", timeout=5)
    absent = alice.get(f"{base}/api/events?docs={mine},{'0' * 32}", timeout=5)
    assert not_yours.status_code == absent.status_code == 404
    assert not_yours.json() == absent.json()
    too_many = alice.get(f"{base}/api/events?docs={','.join(f'{i:032x}' for i in range(51))}", timeout=5)
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "bad_parameter"
    # Without docs: every unfinished document of the caller, and only theirs.
    resp = alice.get(f"{base}/api/events", stream=True, timeout=30)
    stream = sse_events(resp, until_terminal=False)
    next(stream)
    assert json.loads(next(stream)["data"])["document_id"] == mine
    resp.close()
    stack.start_worker()
    poll_until_terminal(alice, base, {"status_url": f"/api/documents/{mine}/status"})
    poll_until_terminal(bob, base, {"status_url": f"/api/documents/{theirs}/status"})
    assert alice.get(f"{base}/api/events", timeout=5).status_code == 204  # nothing left to watch


def _ws(stack, token):
    url = stack.base_url.replace("http://", "ws://") + "/api/ws"
    return simple_websocket.Client.connect(url, headers={"Authorization": f"Bearer {token}"})


def _recv(ws, want=None, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if raw is None:
            continue
        msg = json.loads(raw)
        if want is None or msg["type"] in want:
            return msg
    raise AssertionError(f"no {want} message within {timeout}s")


@pytest.mark.live
def test_websocket_subscribe_progress_unsubscribe_and_access(make_stack):
    stack = make_stack()
    token, other = stack.user("wsuser"), stack.user("wsother")
    s = api(token)
    base = stack.base_url
    conn = connect(stack.redis_url)
    try:
        with warnings.catch_warnings():
            # simple_websocket leaves a refused client's socket to the garbage collector: collected
            # here, so its ResourceWarning is not raised in whichever test runs next.
            warnings.simplefilter("ignore", ResourceWarning)
            with pytest.raises(simple_websocket.ConnectionError):
                _ws(stack, token)  # off by default: the upgrade is refused
            gc.collect()
        refused = s.get(
            base + "/api/ws",
            timeout=5,
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "transport_off"
        flags.set_override(conn, websocket=True)
        a, b = upload(s, base, PDF)["id"], upload(s, base, PDF)["id"]
        foreign = upload(api(other), base, PDF)["id"]
        ws = _ws(stack, token)
        ws.send(json.dumps({"type": "subscribe", "documents": [a, b, foreign, "../etc"]}))
        subscribed = _recv(ws, {"subscribed"})
        assert subscribed == {"type": "subscribed", "documents": [a, b], "denied": [foreign, "../etc"]}
        ws.send(json.dumps({"type": "unsubscribe", "documents": [b]}))
        ws.send("not json")
        assert _recv(ws, {"error"})["code"] == "bad_message"
        stack.start_worker()
        seen = []
        while True:
            msg = _recv(ws, {"progress", "complete", "error", "ping"})
            if msg["type"] == "ping":
                ws.send(json.dumps({"type": "pong"}))
                continue
            seen.append(msg)
            if msg["type"] == "complete":
                break
        assert {m["document_id"] for m in seen} == {a}  # b was unsubscribed, foreign denied
        seqs = [m["data"]["seq"] for m in seen]
        assert seqs == sorted(set(seqs)) and seen[-1]["data"]["state"] == "complete"
        ws.close()
    finally:
        flags.clear_override(conn)
        conn.connection_pool.disconnect()


@pytest.mark.live
def test_websocket_ping_timeout_closes_dead_socket_and_mode_switch(make_stack):
    stack = make_stack()
    admin = api(stack.user("ops-ws", admin=True))
    token = stack.user("sleepy")
    conn = connect(stack.redis_url)
    try:
        flags.set_override(conn, websocket=True)
        ws = _ws(stack, token)
        assert _recv(ws, {"ping"}, timeout=5) == {"type": "ping"}
        stats_url = stack.base_url + "/api/realtime/stats"
        by_transport = lambda: admin.get(stats_url, timeout=5).json()["connectionsByTransport"]  # noqa: E731
        assert wait_for(lambda: by_transport().get("ws") == 1)
        # No pong: the server closes the socket at the next ping time (SSE_PING_INTERVAL=1 s).
        deadline = time.monotonic() + 10
        with pytest.raises(simple_websocket.ConnectionClosed):
            while time.monotonic() < deadline:
                ws.receive(timeout=0.5)
        wait_for(lambda: admin.get(stats_url, timeout=5).json()["totalConnections"] == 0)

        live_ws = _ws(stack, token)
        _recv(live_ws, {"ping"}, timeout=5)
        live_ws.send(json.dumps({"type": "pong"}))
        flags.set_override(conn, websocket=False)  # the operator turns WebSockets off
        assert _recv(live_ws, {"mode"}, timeout=5) == {"type": "mode", "mode": "sse"}
    finally:
        flags.clear_override(conn)
        conn.connection_pool.disconnect()


@pytest.mark.live
def test_closed_websocket_frees_its_slot_at_once(make_stack):
    stack = make_stack(SSE_PING_INTERVAL="30000", WEBSOCKET_ENABLED="true")
    admin = api(stack.user("ops-close", admin=True))
    ws = _ws(stack, stack.user("closer"))
    stats_url = stack.base_url + "/api/realtime/stats"
    wait_for(lambda: admin.get(stats_url, timeout=5).json()["local"]["totalConnections"] == 1)
    closed_at = time.monotonic()
    ws.close()
    # Released on the close itself, not at the next ping 30 s later.
    wait_for(lambda: admin.get(stats_url, timeout=5).json()["local"]["totalConnections"] == 0, timeout=5)
    assert time.monotonic() - closed_at < 5


@pytest.mark.live
def test_websocket_handshake_checks_origin(make_stack):
    stack = make_stack(WEBSOCKET_ENABLED="true", ALLOWED_ORIGINS="https://docs.example.org")
    token = stack.user("origin-user")
    url = stack.base_url.replace("http://", "ws://") + "/api/ws"
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Authorization": f"Bearer {token}",
    }
    for evil in ("https://evil.example", "null", "http://127.0.0.1.evil.example", "http://127.0.0.1:1"):
        refused = requests.get(stack.base_url + "/api/ws", headers={**handshake, "Origin": evil}, timeout=5)
        assert refused.status_code == 403, evil
        assert refused.json()["error"]["code"] == "bad_origin"
    own = stack.base_url  # http://127.0.0.1:<port>, the Host header requests sends
    for good in (own, own + "/", own.replace("http://", "HTTP://"), "https://docs.example.org"):
        accepted = requests.get(
            stack.base_url + "/api/ws", headers={**handshake, "Origin": good}, timeout=5, stream=True
        )
        assert accepted.status_code == 101, good
        accepted.close()
    # No Origin (a script with a token): allowed, and the socket works.
    ws = simple_websocket.Client.connect(url, headers={"Authorization": f"Bearer {token}"})
    ws.send(json.dumps({"type": "ping"}))
    assert _recv(ws, {"pong"}, timeout=5) == {"type": "pong"}
    ws.close()
    assert '"event":"origin_refused"' in stack.logs()


@pytest.mark.live
def test_websocket_message_rate_limit_sends_an_error_then_closes(make_stack):
    stack = make_stack(WEBSOCKET_ENABLED="true", WS_MESSAGE_RATE="5", SSE_PING_INTERVAL="30000")
    ws = _ws(stack, stack.user("chatty"))
    for _ in range(5):
        ws.send(json.dumps({"type": "ping"}))
        assert _recv(ws, {"pong"}, timeout=5) == {"type": "pong"}
    ws.send(json.dumps({"type": "ping"}))
    error = _recv(ws, {"error", "pong"}, timeout=5)
    assert error == {"type": "error", "code": "rate_limited", "message": "More than 5 messages in 10 s."}
    with pytest.raises(simple_websocket.ConnectionClosed):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ws.receive(timeout=0.5)
    assert '"reason":"rate_limited"' in stack.logs()
