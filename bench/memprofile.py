"""Where a livedoc web worker's memory per open stream goes (tracemalloc), for bench/run.py's RSS column.

    .venv/bin/python bench/memprofile.py [--streams 1000] [--frames 12] [--top 25]
    .venv/bin/python bench/memprofile.py --transport ws --docs 10    # WebSockets watching 10 documents each

Starts the same throwaway deployment as bench/run.py, serves livedoc with bench/gunicorn_tracemalloc.py
(gunicorn.conf.py + tracemalloc), snapshots the worker's Python heap before and after opening the
streams, and prints the allocation sites that grew most (bytes per stream), grouped by line and by
the innermost livedoc/flask/gunicorn/gevent frame. tracemalloc sees Python allocations only: greenlet
stacks copied to the heap and C buffers show up in RSS but not here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


def snapshot(trigger: Path, timeout: float = 60) -> tracemalloc.Snapshot:
    trigger.touch()
    deadline = time.monotonic() + timeout
    while trigger.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(trigger) + ".snap")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--system",
        default="livedoc",
        choices=["livedoc", "naive", "flask-sse"],
        help="the peers get the same tracemalloc config, for a like-for-like floor",
    )
    parser.add_argument(
        "--transport",
        default="sse",
        choices=["sse", "multi", "ws"],
        help="livedoc: single-document SSE, multiplexed SSE, or WebSocket",
    )
    parser.add_argument(
        "--docs",
        type=int,
        default=None,
        help=f"documents per connection (multi, ws; default {run.DOCS_PER_CONN})",
    )
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    run.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="livedoc-memprofile-"))
    bench = run.Bench(work, set())
    trigger = work / "snapshot"
    try:
        bench.setup()
        docs = 1 if args.transport == "sse" else (args.docs or run.DOCS_PER_CONN)
        sc = run.Scenario("memprofile", args.system, args.streams, transport=args.transport, docs=docs)
        bench.base_env.update(TRACEMALLOC_TRIGGER=str(trigger), TRACEMALLOC_FRAMES=str(args.frames))
        bench.livedoc_config = bench.peer_config = str(run.BENCH / "gunicorn_tracemalloc.py")
        server = bench.start_server(sc)
        try:
            bench.warm_up(sc)
            time.sleep(1)
            rss0 = server.worker.memory_info().rss
            before = snapshot(trigger)
            client = bench.load_client(sc, work / "client.json")
            ramped = client.expect("RAMPED", 300)
            time.sleep(2)
            rss1 = server.worker.memory_info().rss
            after = snapshot(trigger)
            client.finish()
        finally:
            server.stop()
        n = max(1, ramped.get("open", args.streams))
        print(
            f"{n} streams; RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MB = "
            f"{(rss1 - rss0) / n / 1024:.1f} KiB per stream (with tracemalloc on)"
        )
        stats = after.compare_to(before, "lineno")
        traced = sum(s.size_diff for s in stats)
        print(
            f"Python heap (tracemalloc) grew {traced / 2**20:.1f} MB = "
            f"{traced / n / 1024:.1f} KiB per stream\n"
        )
        print("by line (KiB per stream, allocations per stream):")
        for s in stats[: args.top]:
            print(f"  {s.size_diff / n / 1024:7.2f}  {s.count_diff / n:6.1f}  {s.traceback[0]}")
        print("\nby traceback (innermost project/framework frames):")
        for s in after.compare_to(before, "traceback")[:12]:
            print(f"  {s.size_diff / n / 1024:7.2f} KiB/stream")
            keep = (
                "site-packages/gunicorn",
                "/livedoc/",
                "/blueprints/",
                "site-packages/flask",
                "site-packages/werkzeug",
                "site-packages/gevent",
            )
            frames = [f for f in s.traceback if any(k in f.filename for k in keep)]
            for fr in list(reversed(frames))[:6] or [s.traceback[0]]:
                print(f"        {fr.filename.split('site-packages/')[-1]}:{fr.lineno}")
    finally:
        bench.close()
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
