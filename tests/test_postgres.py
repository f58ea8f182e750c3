"""PostgreSQL (psycopg 3) under gunicorn's gevent workers: open streams hold no database connection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import dbs
from tests.live import api, sse_events
from tests.pdfgen import make_pdf
from tests.support import wait_for

pytestmark = [
    pytest.mark.db,
    pytest.mark.live,
    pytest.mark.skipif(not dbs.is_postgres(), reason="needs PostgreSQL (TEST_DATABASE_URL)"),
]

STREAMS = 30


def backends(database: str) -> list[tuple[str, str]]:
    """(state, application) of every server process connected to the database, from pg_stat_activity."""
    import psycopg

    dsn = dbs.server_url().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, backend_type FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [(state or "", kind) for state, kind in rows]


def test_open_streams_hold_no_database_connection(make_stack):
    # A pool of 2 and no overflow: were every stream to keep its connection, the third would wait
    # DB_POOL_TIMEOUT and fail, and pg_stat_activity would show them.
    stack = make_stack(DB_POOL_SIZE="2", DB_MAX_OVERFLOW="0", DB_POOL_TIMEOUT="3", MAX_STREAMS_PER_USER="100")
    database = stack.env["DATABASE_URL"].rpartition("/")[2]
    s = api(stack.user("pg-streams"))
    doc = s.post(
        f"{stack.base_url}/api/documents",
        files={"file": ("d.pdf", make_pdf(["one"]), "application/pdf")},
        timeout=10,
    ).json()
    streams = []
    try:
        for _ in range(STREAMS):
            resp = s.get(
                stack.base_url + doc["events_url"],
                headers={"Accept": "text/event-stream"},
                stream=True,
                timeout=30,
            )
            assert resp.status_code == 200
            events = sse_events(resp, until_terminal=False)
            assert next(events) == {"retry": "500"}
            assert next(events)["event"] == "progress"
            streams.append((resp, events))
        # Every stream is parked past its first event: then none holds a database connection.
        wait_for(
            lambda: not [b for b in backends(database) if b[1] == "client backend" and b[0] != "idle"],
            10,
            what="no stream holds a database connection",
        )
        assert len([b for b in backends(database) if b[1] == "client backend"]) <= 2
        # The pool is free for everyone else while the streams stay open.
        listing = s.get(f"{stack.base_url}/api/documents", timeout=10)
        assert listing.status_code == 200 and [d["id"] for d in listing.json()["documents"]] == [doc["id"]]
        # ...and the streams are still open: each still gets its pings.
        for _, events in (streams[0], streams[-1]):
            assert next(events) == {"comment": "ping"}
    finally:
        for resp, _ in streams:
            resp.close()


GEVENT_PROBE = """
from gevent import monkey; monkey.patch_all()
import sys, time, gevent, psycopg, psycopg.waiting
def nap():
    with psycopg.connect(sys.argv[1]) as conn:
        conn.execute("SELECT pg_sleep(1)")
start = time.monotonic()
gevent.joinall([gevent.spawn(nap) for _ in range(4)], raise_error=True)
print(psycopg.waiting.wait.__name__, round(time.monotonic() - start, 2))
"""


def test_psycopg_waits_cooperatively_under_gevent():
    # What gunicorn's gevent worker does: patch first, then import psycopg. Four 1 s queries on four
    # greenlets must overlap; with the C wait (not gevent-aware) they would take 4 s.
    dsn = dbs.server_url().replace("postgresql+psycopg://", "postgresql://")
    out = subprocess.run(
        [sys.executable, "-c", GEVENT_PROBE, dsn], capture_output=True, text=True, timeout=60, check=True
    )
    wait_name, elapsed = out.stdout.split()
    assert wait_name != "wait_c"
    assert float(elapsed) < 2.5
