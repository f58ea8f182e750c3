"""The test kit: what several test modules share (test modules import this, never each other).

tests/support          ROOT, TERMINAL, wait_for and the transient errors a wait may ride over
tests/support/app.py   in-process app helpers: csrf_from, Users, run_jobs
tests/support/streams.py  live-stack helpers: upload, status waits, SSE streams, the Viewer thread
tests/support/browser.py  Playwright plugin: chromium, console watching, contexts, signed-in pages

Real processes (Stack, Proc, MotoServer, api, sse_events) stay in tests/live.py, generated documents
in tests/pdfgen.py and tests/officegen.py, databases in tests/dbs.py, sentinels in tests/sentinels.py:
bench/ imports tests/live.py and tests/pdfgen.py by those paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests
from redis.exceptions import RedisError

from livedoc.progress import TERMINAL

__all__ = ["ROOT", "TERMINAL", "TRANSIENT", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent.parent
# What a wait may ride over while processes are being killed and restarted under it: a refused or
# cut connection, a half-written answer, a key not there yet.
TRANSIENT: tuple[type[Exception], ...] = (requests.RequestException, ValueError, KeyError, RedisError)

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.1,
    what: str = "condition",
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Call predicate until it returns a truthy value and return that; fail after timeout seconds.

    Exceptions of the `ignore` types count as "not yet"; any other exception fails the wait at once.
    """
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last value: {value!r})")
