"""The hub's stats snapshot keeps its counts as connections and subscriptions come and go: after any
sequence of connects, watches (re-watches on a new attempt), unwatches and disconnects it says what
a walk over the open connections says, and nothing of a closed connection remains."""

from __future__ import annotations

import random
from collections import Counter

from livedoc.flags import RealtimeFlags, Transport
from livedoc.hub import StreamHub

SSE_MODE = RealtimeFlags(enabled=True, mode="sse", push=False, websocket=True)
LABELS = [
    (Transport.SSE, None),
    (Transport.SSE, "sse-multi"),
    (Transport.WS, None),
    (Transport.LONGPOLL, None),
]


def walked(hub: StreamHub) -> dict:
    by_doc, by_transport, by_user = Counter(), Counter(), Counter()
    for conn in hub._conns:
        by_transport[conn.label] += 1
        by_user[str(conn.user_id)] += 1
        by_doc.update(list(conn.subs))
    return {
        "totalConnections": len(hub._conns),
        "documentSubscriptions": len(by_doc),
        "connectionsByDocument": dict(by_doc),
        "connectionsByTransport": dict(by_transport),
        "connectionsByUser": dict(by_user),
        "watchedJobs": len({sub.job_id for conn in hub._conns for sub in conn.subs.values()}),
    }


def counted(hub: StreamHub) -> dict:
    snap = hub.snapshot()
    return {key: snap[key] for key in walked(hub)}


def test_snapshot_counts_follow_every_change(redis_conn, monkeypatch):
    hub = StreamHub(redis_conn, SSE_MODE, poll_interval=1.0, host_id="test-host")
    monkeypatch.setattr(hub, "_ensure_running", lambda: None)  # no poll loop: the test drives the hub
    rng = random.Random(7)
    conns = []
    for step in range(3000):
        roll = rng.random()
        if roll < 0.15 or not conns:
            transport, label = rng.choice(LABELS)
            conns.append(hub.connect(rng.randint(1, 4), transport, label))
        elif roll < 0.25:
            hub.disconnect(conns.pop(rng.randrange(len(conns))))
        elif roll < 0.75:
            doc = f"doc{rng.randint(1, 12)}"
            rng.choice(conns).watch(f"{doc}-attempt{rng.randint(1, 2)}", doc)  # same job or a new attempt
        else:
            rng.choice(conns).unwatch(f"doc{rng.randint(1, 12)}")
        if step % 50 == 0:
            assert counted(hub) == walked(hub), step
    assert counted(hub) == walked(hub)
    assert hub.snapshot()["documentSubscriptions"] > 0  # the sequence did reach a busy state

    for conn in conns:
        hub.disconnect(conn)
        hub.disconnect(conn)  # twice: the second is a no-op
    empty = counted(hub)
    assert empty == {
        "totalConnections": 0,
        "documentSubscriptions": 0,
        "connectionsByDocument": {},
        "connectionsByTransport": {},
        "connectionsByUser": {},
        "watchedJobs": 0,
    }
    assert hub.user_streams(1) == 0
