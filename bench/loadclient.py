"""SSE load client for bench/run.py: N raw-socket HTTP/1.1 streams in one gevent process, loopback only.

Started by the runner with a targets file; talks to it over stdin/stdout, one line each way:
  (start)      opens every stream (at most --concurrency connects in flight), prints `RAMPED {json}`
  PROBE <n>    opens n more streams one after another, times each, closes it; prints `PROBED {json}`
  STOP         ends every stream, writes the results JSON to --out, prints `DONE`, exits
Connect time is TCP connect + request sent -> response headers received. For every `data:` line
whose JSON carries `updated_at` it records (updated_at, receipt time), so the runner can compute
save -> receipt latency over its driven window. A stream that ends before STOP counts as dropped.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import gevent  # noqa: E402
import gevent.socket  # noqa: E402
from gevent.lock import Semaphore  # noqa: E402


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Client:
    def __init__(self, host: str, port: int, headers: dict, wait_headers: bool, header_timeout: float):
        self.host = host
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.wait_headers = wait_headers
        self.header_timeout = header_timeout
        self.stopping = False
        self.connect_ms: list[float] = []
        self.failed: Counter = Counter()
        self.dropped: Counter = Counter()
        self.events: list[tuple[float, float]] = []  # (updated_at, receipt time)
        self.unparsed = 0
        self.pings = 0
        self.open_now = 0
        self.socks: set = set()
        self.greenlets: list = []

    def request(self, path: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n"
                f"Cache-Control: no-cache\r\n{self.extra}\r\n").encode()

    def _connect(self, path: str):
        """Open one stream; returns (socket, leftover body bytes, chunked, connect ms) or raises."""
        t0 = time.perf_counter()
        sock = socket.create_connection((self.host, self.port), timeout=self.header_timeout)
        self.socks.add(sock)
        sock.sendall(self.request(path))
        return sock, t0

    def _headers(self, sock, t0):
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("eof_before_headers")
            buf += data
        ms = (time.perf_counter() - t0) * 1000
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        chunked = b"transfer-encoding: chunked" in head.lower()
        return status, chunked, rest, ms

    def stream(self, path: str, ready) -> None:
        """One stream for the whole run; `ready()` is called once it counts as open (or failed)."""
        sock = None
        signalled = False
        try:
            try:
                sock, t0 = self._connect(path)
                if not self.wait_headers:
                    ready()
                    signalled = True
                    sock.settimeout(None)
                status, chunked, rest, ms = self._headers(sock, t0)
            except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome
                if self.stopping:
                    return
                self.failed[exc.__class__.__name__ if not isinstance(exc, ConnectionError)
                            or not exc.args else str(exc.args[0])] += 1
                return
            if status != 200:
                self.failed[f"http_{status}"] += 1
                return
            self.connect_ms.append(ms)
            self.open_now += 1
            if not signalled:
                ready()
                signalled = True
            sock.settimeout(None)
            self._read(sock, chunked, rest)
        finally:
            if not signalled:
                ready()
            if sock is not None:
                self.socks.discard(sock)
                try:
                    sock.close()
                except OSError:
                    pass

    def _read(self, sock, chunked: bool, rest: bytes) -> None:
        raw = rest
        need = 0  # bytes (payload + CRLF) still owed by the current chunk; 0: a size line is next
        sse = b""
        data = b""
        now = time.time()
        try:
            while True:
                if raw:
                    if chunked:
                        out = []
                        while raw:
                            if need == 0:
                                i = raw.find(b"\r\n")
                                if i < 0:
                                    break
                                size = int(raw[:i].split(b";", 1)[0], 16)
                                if size == 0:
                                    raise EOFError("end_of_body")
                                raw = raw[i + 2:]
                                need = size + 2
                            if len(raw) < need:
                                break
                            out.append(raw[:need - 2])
                            raw = raw[need:]
                            need = 0
                        sse += b"".join(out)
                    else:
                        sse += raw
                        raw = b""
                    while True:
                        i = sse.find(b"\n\n")
                        if i < 0:
                            break
                        self._event(sse[:i], now)
                        sse = sse[i + 2:]
                data = sock.recv(65536)
                now = time.time()
                if not data:
                    raise EOFError("eof")
                raw += data
        except Exception as exc:  # noqa: BLE001
            if not self.stopping:
                self.dropped[str(exc) if isinstance(exc, EOFError) else exc.__class__.__name__] += 1
        finally:
            self.open_now -= 1

    def _event(self, block: bytes, now: float) -> None:
        if block.startswith(b":"):
            self.pings += 1
            return
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    value = json.loads(line[5:])
                    self.events.append((float(value["updated_at"]), now))
                except (ValueError, KeyError, TypeError):
                    self.unparsed += 1
                return

    def ramp(self, paths: list[str], concurrency: int, deadline: float) -> float:
        sem = Semaphore(concurrency)
        t0 = time.perf_counter()
        for path in paths:
            if not sem.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self.failed["ramp_deadline"] += 1
                continue
            self.greenlets.append(gevent.spawn(self.stream, path, sem.release))
        # Wait for the last connects to count as open.
        for _ in range(concurrency):
            sem.acquire(timeout=max(0.0, deadline - time.monotonic()))
        return time.perf_counter() - t0

    def probe(self, paths: list[str], n: int) -> dict:
        times, failed = [], Counter()
        for i in range(n):
            sock = None
            try:
                sock, t0 = self._connect(paths[i % len(paths)])
                status, _, _, ms = self._headers(sock, t0)
                if status == 200:
                    times.append(ms)
                else:
                    failed[f"http_{status}"] += 1
            except Exception as exc:  # noqa: BLE001
                failed[exc.__class__.__name__] += 1
            finally:
                if sock is not None:
                    self.socks.discard(sock)
                    sock.close()
            gevent.sleep(0.02)
        return {"probe_ms": times, "probe_failed": dict(failed)}

    def stop(self) -> None:
        self.stopping = True
        gevent.killall(self.greenlets, block=True, timeout=10)
        for sock in list(self.socks):
            try:
                sock.close()
            except OSError:
                pass


def read_command() -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        gevent.socket.wait_read(0)
        chunk = os.read(0, 4096)
        if not chunk:
            return "STOP"
        buf += chunk
    return buf.decode().strip()


def say(word: str, body: dict | None = None) -> None:
    sys.stdout.write(word + (" " + json.dumps(body) if body is not None else "") + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--targets", required=True, help='JSON file: {"paths": [...], "headers": {...}}')
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--ramp-timeout", type=float, default=180)
    parser.add_argument("--header-timeout", type=float, default=30)
    parser.add_argument("--no-wait-headers", action="store_true",
                        help="count a stream as open once its request is sent (Flask-SSE sends no "
                             "headers before its first message)")
    args = parser.parse_args()
    raise_nofile()
    targets = json.loads(open(args.targets).read())
    client = Client("127.0.0.1", args.port, targets.get("headers", {}), not args.no_wait_headers,
                    args.header_timeout)
    deadline = time.monotonic() + args.ramp_timeout
    ramp_s = client.ramp(targets["paths"], args.concurrency, deadline)
    say("RAMPED", {"ramp_s": ramp_s, "open": client.open_now if client.wait_headers else
                   len(targets["paths"]) - sum(client.failed.values()),
                   "failed": dict(client.failed)})
    while True:
        cmd = read_command()
        if cmd.startswith("PROBE"):
            say("PROBED", client.probe(targets["paths"], int(cmd.split()[1])))
        elif cmd == "STATUS":
            say("STATUS", {"open": client.open_now, "failed": dict(client.failed),
                           "dropped": dict(client.dropped), "events": len(client.events)})
        elif cmd == "STOP":
            open_at_stop = client.open_now
            client.stop()
            with open(args.out, "w") as fh:
                json.dump({"connect_ms": client.connect_ms, "failed": dict(client.failed),
                           "dropped": dict(client.dropped), "events": client.events,
                           "unparsed": client.unparsed, "pings": client.pings,
                           "open_at_stop": open_at_stop, "ramp_s": ramp_s}, fh)
            say("DONE")
            return


if __name__ == "__main__":
    main()
