"""Load client for bench/run.py: N raw-socket SSE streams or WebSockets in one gevent process, loopback only.

Started by the runner with a targets file; talks to it over stdin/stdout, one line each way:
  (start)      opens every stream (at most --concurrency connects in flight), prints `RAMPED {json}`
  PROBE <n>    opens n more streams one after another, times each, closes it; prints `PROBED {json}`
  STOP         ends every stream, writes the results JSON to --out, prints `DONE`, exits

Targets (JSON): {"kind": "sse" | "ws", "paths": [...], "headers": {...}, "subscribe": [[doc id, ...], ...]}
- sse: HTTP/1.1 GET, chunked decoding, SSE parsing. Connect time = TCP connect + request sent ->
  response headers received. Every `data:` line whose JSON carries `updated_at` is an event (a
  multiplexed stream's data also carries `document_id`; same parsing).
- ws: a minimal RFC 6455 client written here (no library: cheap enough to keep up with thousands of
  sockets on the same CPUs as the server): HTTP upgrade by hand, server frames parsed (text,
  continuation, close, ping), client frames masked. After the 101 it sends
  {"type":"subscribe","documents":[...]}; connect time = TCP connect -> `subscribed` received (the
  101 alone is `handshake_ms`). Answers the server's {"type":"ping"} with {"type":"pong"} (and
  control-frame pings with pongs). Every {"type":"progress"|"complete"|"error","data":{...}} is an
  event; error messages without `data` (protocol errors) are counted by code.
For every event it records (updated_at, receipt time), so the runner can compute save -> receipt
latency over its driven window. A stream that ends before STOP counts as dropped.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import hashlib  # noqa: E402
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

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    if not n:
        return head + mask
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


class WsClosed(Exception):
    """The server sent a close frame."""


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _failure(exc: BaseException) -> str:
    """How a failed connect is counted: a connection error by its words, anything else by its class."""
    return str(exc.args[0]) if isinstance(exc, ConnectionError) and exc.args else exc.__class__.__name__


class Client:
    def __init__(
        self,
        host: str,
        port: int,
        headers: dict,
        wait_headers: bool,
        header_timeout: float,
        kind: str = "sse",
    ):
        self.kind = kind
        self.host = host
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.wait_headers = wait_headers
        self.header_timeout = header_timeout
        self.stopping = False
        self.connect_ms: list[float] = []
        self.handshake_ms: list[float] = []  # ws: TCP connect -> 101
        self.ws_errors: Counter = Counter()  # ws: protocol error messages by code
        self.denied = 0  # ws: documents the server refused in `subscribed`
        self.failed: Counter = Counter()
        self.dropped: Counter = Counter()
        self.events: list[tuple[float, float]] = []  # (updated_at, receipt time)
        self.finals: list[tuple[str, str, int]] = []  # (stream and document, state, seq) of terminal events
        self.unparsed = 0
        self.pings = 0
        self.open_now = 0
        self.socks: set = set()
        self.greenlets: list = []

    def request(self, path: str) -> bytes:
        return (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n{self.extra}\r\n"
        ).encode()

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
        return status, chunked, rest, ms, head

    def stream(self, target, ready) -> None:
        if self.kind == "ws":
            return self.ws_stream(target, ready)
        return self.sse_stream(target, ready)

    def sse_stream(self, path: str, ready) -> None:
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
                status, chunked, rest, ms, _ = self._headers(sock, t0)
            except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome
                if self.stopping:
                    return
                self.failed[_failure(exc)] += 1
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
            self._read(sock, chunked, rest, path)
        finally:
            self._release(sock, signalled, ready)

    def _read(self, sock, chunked: bool, rest: bytes, path: str = "") -> None:
        raw = rest
        need = 0  # bytes (payload + CRLF) still owed by the current chunk; 0: a size line is next
        ended = False
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
                                    ended = True  # after the events of this read (the terminal one)
                                    raw = b""
                                    break
                                raw = raw[i + 2 :]
                                need = size + 2
                            if len(raw) < need:
                                break
                            out.append(raw[: need - 2])
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
                        self._event(sse[:i], now, path, id(sock))
                        sse = sse[i + 2 :]
                    if ended:
                        raise EOFError("end_of_body")
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

    def _event(self, block: bytes, now: float, path: str = "", stream: int = 0) -> None:
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
                self._final(f"{stream}:{value.get('document_id') or path}", value)
                return

    def _final(self, key: str, value: dict) -> None:
        if value.get("state") in ("complete", "failed"):
            self.finals.append((key, value["state"], value.get("seq")))

    # -- WebSocket --------------------------------------------------------------------------------
    def _ws_open(self, target) -> tuple:
        """TCP connect, upgrade, send the subscribe message; returns (socket, leftover, t0, 101 ms)."""
        path, docs = target
        t0 = time.perf_counter()
        sock = socket.create_connection((self.host, self.port), timeout=self.header_timeout)
        self.socks.add(sock)
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{self.extra}\r\n"
            ).encode()
        )
        status, _, rest, ms, head = self._headers(sock, t0)
        if status != 101:
            raise ConnectionError(f"http_{status}")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 - RFC 6455
        if b"sec-websocket-accept: " + accept.lower() not in head.lower():
            raise ConnectionError("bad_accept")
        sock.sendall(ws_frame(json.dumps({"type": "subscribe", "documents": docs}).encode()))
        return sock, bytearray(rest), t0, ms

    def _ws_frames(self, sock, buf: bytearray):
        """Yield (complete message, receipt time) from buf, reading the socket when it runs dry."""
        partial = b""
        now = time.time()
        while True:
            while len(buf) >= 2:
                b0, b1 = buf[0], buf[1]
                n, pos = b1 & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, pos = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, pos = int.from_bytes(buf[2:10], "big"), 10
                if b1 & 0x80:
                    raise ConnectionError("masked_server_frame")
                if len(buf) < pos + n:
                    break
                payload = bytes(buf[pos : pos + n])
                del buf[: pos + n]
                opcode = b0 & 0x0F
                if opcode == 0x8:
                    raise WsClosed(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)
                if opcode == 0x9:
                    sock.sendall(ws_frame(payload, 0xA))
                    continue
                if opcode == 0xA:
                    continue
                partial = payload if opcode in (0x1, 0x2) else partial + payload
                if b0 & 0x80:
                    yield partial, now
                    partial = b""
            data = sock.recv(65536)
            if not data:
                raise EOFError("eof")
            now = time.time()
            buf += data

    def _ws_until_subscribed(self, sock, buf: bytearray, t0: float):
        """Read until the `subscribed` answer; returns (the frame iterator, connect ms)."""
        frames = self._ws_frames(sock, buf)
        for raw, now in frames:
            msg = json.loads(raw)
            if msg.get("type") == "subscribed":
                self.denied += len(msg.get("denied") or [])
                return frames, (time.perf_counter() - t0) * 1000
            self._ws_message(sock, msg, now)
        raise EOFError("eof_before_subscribed")

    def _ws_message(self, sock, msg: dict, now: float) -> None:
        kind = msg.get("type")
        if kind == "ping":
            self.pings += 1
            sock.sendall(ws_frame(b'{"type":"pong"}'))
        elif "data" in msg:
            try:
                self.events.append((float(msg["data"]["updated_at"]), now))
            except (KeyError, TypeError, ValueError):
                self.unparsed += 1
                return
            self._final(f"{id(sock)}:{msg.get('document_id')}", msg["data"])
        elif kind == "error":
            self.ws_errors[str(msg.get("code"))] += 1

    def _release(self, sock, signalled: bool, ready) -> None:
        """A stream's end: report it to the ramp if it never was, and close its socket."""
        if not signalled:
            ready()
        if sock is not None:
            self.socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def ws_stream(self, target, ready) -> None:
        """One WebSocket for the whole run; open once `subscribed` arrives."""
        sock = None
        signalled = False
        counted = False
        try:
            try:
                sock, buf, t0, hs_ms = self._ws_open(target)
                frames, ms = self._ws_until_subscribed(sock, buf, t0)
            except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome
                if not self.stopping:
                    self.failed[_failure(exc)] += 1
                return
            self.handshake_ms.append(hs_ms)
            self.connect_ms.append(ms)
            self.open_now += 1
            counted = True
            ready()
            signalled = True
            sock.settimeout(None)
            for raw, now in frames:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    self.unparsed += 1
                    continue
                self._ws_message(sock, msg, now)
        except Exception as exc:  # noqa: BLE001
            if not self.stopping:
                name = (
                    f"ws_close_{exc.args[0]}"
                    if isinstance(exc, WsClosed)
                    else str(exc)
                    if isinstance(exc, EOFError)
                    else exc.__class__.__name__
                )
                self.dropped[name] += 1
        finally:
            if counted:
                self.open_now -= 1
            self._release(sock, signalled, ready)

    def ramp(self, targets: list, concurrency: int, deadline: float) -> float:
        sem = Semaphore(concurrency)
        t0 = time.perf_counter()
        for target in targets:
            if not sem.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self.failed["ramp_deadline"] += 1
                continue
            self.greenlets.append(gevent.spawn(self.stream, target, sem.release))
        # Wait for the last connects to count as open.
        for _ in range(concurrency):
            sem.acquire(timeout=max(0.0, deadline - time.monotonic()))
        return time.perf_counter() - t0

    def probe(self, targets: list, n: int) -> dict:
        times, failed = [], Counter()
        for i in range(n):
            sock = None
            try:
                if self.kind == "ws":
                    sock, rest, t0, _ = self._ws_open(targets[i % len(targets)])
                    _, ms = self._ws_until_subscribed(sock, rest, t0)
                    times.append(ms)
                    sock.sendall(ws_frame(b"\x03\xe9", 0x8))  # close 1001 going away, as a browser
                    continue
                sock, t0 = self._connect(targets[i % len(targets)])
                status, _, _, ms, _ = self._headers(sock, t0)
                if status == 200:
                    times.append(ms)
                else:
                    failed[f"http_{status}"] += 1
            except Exception as exc:  # noqa: BLE001
                failed[_failure(exc)] += 1
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--targets", required=True, help='JSON file: {"paths": [...], "headers": {...}}')
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--ramp-timeout", type=float, default=180)
    parser.add_argument("--header-timeout", type=float, default=30)
    parser.add_argument(
        "--no-wait-headers",
        action="store_true",
        help="count a stream as open once its request is sent (Flask-SSE sends no "
        "headers before its first message)",
    )
    args = parser.parse_args()
    raise_nofile()
    targets = json.loads(open(args.targets).read())
    kind = targets.get("kind", "sse")
    client = Client(
        "127.0.0.1",
        args.port,
        targets.get("headers", {}),
        not args.no_wait_headers,
        args.header_timeout,
        kind,
    )
    conns = list(zip(targets["paths"], targets["subscribe"])) if kind == "ws" else targets["paths"]
    deadline = time.monotonic() + args.ramp_timeout
    ramp_s = client.ramp(conns, args.concurrency, deadline)
    say(
        "RAMPED",
        {
            "ramp_s": ramp_s,
            "open": client.open_now
            if client.wait_headers
            else len(targets["paths"]) - sum(client.failed.values()),
            "failed": dict(client.failed),
        },
    )
    while True:
        cmd = read_command()
        if cmd.startswith("PROBE"):
            say("PROBED", client.probe(conns, int(cmd.split()[1])))
        elif cmd == "STATUS":
            say(
                "STATUS",
                {
                    "open": client.open_now,
                    "failed": dict(client.failed),
                    "dropped": dict(client.dropped),
                    "events": len(client.events),
                },
            )
        elif cmd == "STOP":
            open_at_stop = client.open_now
            client.stop()
            with open(args.out, "w") as fh:
                json.dump(
                    {
                        "connect_ms": client.connect_ms,
                        "handshake_ms": client.handshake_ms,
                        "ws_errors": dict(client.ws_errors),
                        "denied": client.denied,
                        "failed": dict(client.failed),
                        "finals": client.finals,
                        "dropped": dict(client.dropped),
                        "events": client.events,
                        "unparsed": client.unparsed,
                        "pings": client.pings,
                        "open_at_stop": open_at_stop,
                        "ramp_s": ramp_s,
                    },
                    fh,
                )
            say("DONE")
            return


if __name__ == "__main__":
    main()
