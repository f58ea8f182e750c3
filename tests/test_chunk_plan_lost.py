"""A chunked conversion whose plan Redis lost (restarted empty) gives up at once, not at JOB_TIMEOUT.

Real gunicorn (gevent), two real `rq worker`s and Redis: mid-conversion the plan's keys are removed
the way an empty restart removes them; the document job must end that attempt within seconds (and
its retry convert the document) instead of polling for chunks of a plan that is gone.
"""

from __future__ import annotations

import time

import pytest

from livedoc import keys
from livedoc.redis_client import connect
from tests.live import api
from tests.support import wait_for
from tests.support.streams import slow_pdf, upload, wait_status

pytestmark = pytest.mark.live


def test_a_lost_chunk_plan_ends_the_attempt_at_once(make_stack):
    stack = make_stack(
        CHUNK_PAGES="20", RENDER_DPI="300", JOB_TIMEOUT="300", RATELIMIT_STREAM="6000 per minute"
    )
    stack.start_worker()
    stack.start_worker()
    s = api(stack.user("plan-lost"))
    base = stack.base_url
    body = upload(s, base, slow_pdf(200))
    wait_status(s, base, body, lambda st: st["state"] == "running" and st["ready"] >= 5, timeout=120)
    conn = connect(stack.redis_url)
    try:
        plan_keys = list(conn.scan_iter(match=keys.CHUNKS + "*"))
        assert plan_keys, "the document is converted in page ranges"
        lost = time.monotonic()
        conn.delete(*plan_keys)
        # Before: the document job waited for chunks of the lost plan until JOB_TIMEOUT.
        wait_for(
            lambda: s.get(base + body["status_url"], timeout=10).json()["attempt"] >= 2,
            30,
            0.2,
            what="a new attempt after the plan was lost",
        )
        assert time.monotonic() - lost < 30
        final = wait_status(s, base, body, lambda st: st["state"] in ("complete", "failed"), timeout=240)
        assert final["state"] == "complete", final
    finally:
        conn.connection_pool.disconnect()
