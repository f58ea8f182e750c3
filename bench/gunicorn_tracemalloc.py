"""Diagnostic gunicorn config (bench/memprofile.py): livedoc's gunicorn.conf.py plus tracemalloc.

The worker starts tracemalloc and, whenever the file named by TRACEMALLOC_TRIGGER appears, writes a
snapshot to that name + ".snap" and removes the trigger. Not for production: tracemalloc is slow.
"""

import os
import tracemalloc
from pathlib import Path

_root = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
exec(compile(_root.read_text(), str(_root), "exec"))  # noqa: S102 - the real settings, then ours

_livedoc_post_worker_init = post_worker_init  # noqa: F821 - defined by the exec above
# A snapshot of a big heap blocks the worker's loop, heartbeat included, for longer than the usual
# 30 s on a busy machine: the master would kill the worker mid-measurement.
timeout = 600


def post_worker_init(worker):  # noqa: F811
    _livedoc_post_worker_init(worker)
    import gevent

    tracemalloc.start(int(os.environ.get("TRACEMALLOC_FRAMES", "12")))
    trigger = Path(os.environ["TRACEMALLOC_TRIGGER"])

    def watch():
        while True:
            if trigger.exists():
                tracemalloc.take_snapshot().dump(str(trigger) + ".snap")
                trigger.unlink()
            gevent.sleep(0.2)

    gevent.spawn(watch)
