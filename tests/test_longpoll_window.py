"""Long-poll is one request per change window, not per progress save, and never meets its own limit.

A real gunicorn (gevent) and `rq worker`: a viewer on long-poll follows a conversion of hundreds of
pages (hundreds of saves) the way static/js/feed.js does, re-asking at once after each answer.
"""

from __future__ import annotations

import time

import pytest

from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import TERMINAL
from tests.support.streams import upload

pytestmark = pytest.mark.live

# Hundreds of pages at 300 dpi: hundreds of progress saves over many seconds.
BOOK = make_pdf([f"Page {i} of a book read over long-poll" for i in range(1, 301)])


def test_a_longpoll_viewer_of_a_long_conversion_never_sees_429(make_stack):
    # The stream limit as deployed (RATELIMIT_STREAM 120 per minute): one request per save spent it
    # in seconds and the viewer froze on 429 until its Retry-After.
    stack = make_stack(RENDER_DPI="300", LONGPOLL_WINDOW_MS="1000")
    stack.start_worker()
    s = api(stack.user("longpoll-reader"))
    base = stack.base_url
    body = upload(s, base, BOOK)
    url = base + body["status_url"]
    seq, answers, statuses, seqs = 0, 0, [], []
    started = time.monotonic()
    state = None
    while state not in TERMINAL and time.monotonic() - started < 300:
        resp = s.get(f"{url}?after={seq}&wait=25", timeout=40)
        answers += 1
        statuses.append(resp.status_code)
        if resp.status_code != 200:
            break
        data = resp.json()
        seqs.append(data["seq"])
        seq, state = data["seq"], data["state"]
    elapsed = time.monotonic() - started
    assert set(statuses) == {200}, f"the viewer met its own limit: {statuses[-3:]} after {answers} requests"
    assert state == "complete"
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "every answer is news"
    # One answer per window (plus the first, which returns the current state at once): not one per
    # save, and not one per `wait` either (the viewer would see a 25 s old state).
    assert elapsed / 3.0 <= answers <= elapsed / 1.0 + 3, f"{answers} requests in {elapsed:.1f} s"
