"""`python -m workers.office_guard CMD...`: runs LibreOffice in this process group, and takes the
whole group down when the worker process that started it dies.

LibreOffice runs in a process group of its own (so a hung one can be killed with everything it
spawned without touching the worker), which also puts it out of reach of RQ, which kills a stopped
or timed-out work horse by its process group. This guard is that group's leader: its stdin is a
pipe from the work horse, and end-of-file on it means the horse is gone (killed, crashed) and
nobody will ever collect LibreOffice's output, so the group is killed at once.

The guard itself runs outside the sandbox (it parses nothing of the document); what it runs is
`bwrap ... soffice` (workers/sandbox.py). Inside, LibreOffice has a session of its own, so the group
kill reaches bwrap, not LibreOffice: bwrap's --die-with-parent and its pid namespace (whose processes
the kernel kills when its first process ends) take everything inside down with it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

POLL_SECONDS = 0.2


def main(argv: list[str]) -> int:
    """Run argv; return its exit status, or kill the group if stdin closes first."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    while True:
        readable, _, _ = select.select([sys.stdin.fileno()], [], [], POLL_SECONDS)
        if readable and not os.read(sys.stdin.fileno(), 1):
            os.killpg(0, signal.SIGKILL)
        code = child.poll()
        if code is not None:
            return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
