"""Processes of a running worker, for fault tests and benchmarks that kill them."""

from __future__ import annotations

import os


def work_horses(pid: int) -> list[int]:
    """The work horses RQ forked from worker `pid` (each leads its own process group)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and int(fields[2]) == int(entry):
                found.append(int(entry))
    return found
