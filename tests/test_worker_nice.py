"""WORKER_NICE: a real `scripts/worker` lowers its own priority, so the web keeps the CPU for streams."""

from __future__ import annotations

import os
import time

import pytest
from rq import Worker

from livedoc.redis_client import connect


def _niceness_once_registered(stack, pid: int, timeout: float = 30.0) -> int:
    """The worker's niceness once it is in its work loop (it registers there, after setting it)."""
    conn = connect(stack.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while not any(w.pid == pid for w in Worker.all(connection=conn)):
            assert time.monotonic() < deadline, "the worker never registered"
            time.sleep(0.1)
        return os.getpriority(os.PRIO_PROCESS, pid)
    finally:
        conn.connection_pool.disconnect()


@pytest.mark.parametrize(("setting", "expected"), [("10", 10), ("3", 3), ("0", 0)])
def test_worker_runs_at_worker_nice(paused_stack, setting, expected):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert base == 0  # the test process (the web side here) runs at the default priority
    proc = paused_stack.start_worker(env={"WORKER_NICE": setting})
    assert _niceness_once_registered(paused_stack, proc.popen.pid) == expected
    assert os.getpriority(os.PRIO_PROCESS, 0) == base
