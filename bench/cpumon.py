"""Per-second CPU% of a benchmark's processes: is the worker, the load client or the machine the limit?

    .venv/bin/python bench/run.py --scenarios "livedoc multi 5000" --markdown '' &
    .venv/bin/python bench/cpumon.py $! /tmp/cpu.log

Follows every child of the given pid (bench/run.py) and writes one line a second: the time, then
`kind:pid:cpu%` for the load client, the gunicorn processes and Redis (100 = one core). A worker well
under 100% while latencies grow means it is waiting for a core, not working.
"""

from __future__ import annotations

import sys
import time

import psutil


def kind_of(cmd: str) -> str | None:
    """Which of the benchmark's processes a command line is."""
    for word, kind in (("loadclient", "client"), ("gunicorn", "gunicorn"), ("redis", "redis")):
        if word in cmd:
            return kind
    return None


def main() -> None:
    """Sample until the watched process ends."""
    root = psutil.Process(int(sys.argv[1]))
    procs: dict[int, tuple[psutil.Process, str]] = {}
    with open(sys.argv[2], "w") as out:
        while root.is_running():
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                break
            for p in children:
                if p.pid not in procs:
                    try:
                        kind = kind_of(" ".join(p.cmdline()))
                        if kind:
                            p.cpu_percent()
                            procs[p.pid] = (p, kind)
                    except psutil.Error:
                        continue
            time.sleep(1)
            row = []
            for pid, (p, kind) in list(procs.items()):
                try:
                    row.append(f"{kind}:{pid}:{p.cpu_percent():.0f}")
                except psutil.Error:
                    del procs[pid]
            out.write(f"{time.strftime('%H:%M:%S')} {' '.join(row)}\n")
            out.flush()


if __name__ == "__main__":
    main()
