"""livedoc behind a real nginx configured with the README's own block (tests/support/nginx.py).

Every transport on every path a client takes: straight to gunicorn, through nginx over HTTP/1.1, and
through nginx over TLS with HTTP/2 (curl --http2; nginx proxies WebSockets over HTTP/1.1 only, so the
WebSocket on that path is a TLS HTTP/1.1 upgrade on the same port). The table of what each one saw is
printed and written to the test's tmp_path (transports.md). Then what an operator meets: login over
TLS on a port other than 443, the viewer in Chromium over HTTPS with WebSockets on and with SSE, an
SSE transport that never answers, and the 204 that tells a reconnecting EventSource to stop.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import simple_websocket
from playwright.sync_api import Browser, expect

from config import Settings
from tests.live import api, password_for, sse_events
from tests.pdfgen import make_pdf
from tests.support import TERMINAL
from tests.support.app import csrf_from
from tests.support.browser import Console, login
from tests.support.nginx import readme_block
from tests.support.streams import poll_until_terminal, upload

pytestmark = [pytest.mark.live, pytest.mark.timeout(400)]

SETTINGS = {
    "TRUSTED_PROXIES": "1",
    "WEBSOCKET_ENABLED": "true",
    "SESSION_COOKIE_SECURE": "true",
    "RENDER_DPI": "250",
    "MAX_STREAMS_PER_USER": "50",
}
PAGES = 200  # at 250 DPI: several seconds, so updates arriving one by one are told from a burst
LONG_PDF = make_pdf([f"Page {i} of the proxy test\nLine two of page {i}" for i in range(1, PAGES + 1)])
SMALL_PDF = make_pdf(["one", "two", "three"])
TRANSPORTS = ("sse", "sse-multi", "ws", "longpoll")
PATHS = ("direct", "nginx h1", "nginx h2")


@pytest.fixture
def proxied(make_stack, make_nginx):
    """A deployment (web server only, until the test starts the worker) behind README's nginx."""
    stack = make_stack(**SETTINGS)
    return stack, make_nginx(f"127.0.0.1:{stack.ports[0]}")


# -- the README's block, read as nginx reads it ------------------------------------------------------
def _statements(block: str) -> list:
    """The block as nested [name, args, children] (children None for a simple directive)."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#.*", "", block))
    stack: list[list] = [[]]
    words: list[str] = []
    for tok in tokens:
        if tok == "{":
            node = [words[0], words[1:], []]
            stack[-1].append(node)
            stack.append(node[2])
            words = []
        elif tok == "}":
            stack.pop()
        elif tok == ";":
            stack[-1].append([words[0], words[1:], None])
            words = []
        else:
            words.append(tok)
    return stack[0]


def _effective(server: list, location: list, name: str) -> list[list[str]]:
    """A directive's values in a location: its own if it sets any, else the server's (nginx's rule)."""
    own = [args for n, args, _ in location[2] if n == name]
    return own or [args for n, args, _ in server if n == name]


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert m, value
    return int(m.group(1)) * units[m.group(2) or "s"]


def test_readme_block_sets_each_header_once_and_suits_every_transport():
    """Item 7: Host keeps the port, no header twice, uploads unbuffered, timeouts above the waits."""
    top = _statements(readme_block())
    servers = [children for name, _, children in top if name == "server"]
    assert len(servers) == 1
    server = servers[0]
    locations = {args[-1]: node for node in server if node[0] == "location" for args in [node[1]]}
    assert "/api/" in locations, locations.keys()
    settings = Settings()
    for path, location in locations.items():
        headers = [args[0].lower() for args in _effective(server, location, "proxy_set_header")]
        assert len(headers) == len(set(headers)), f"{path}: a header set twice: {headers}"
        values = {args[0].lower(): args[1] for args in _effective(server, location, "proxy_set_header")}
        assert values.get("host") == "$http_host", f"{path}: Host must keep the port: {values}"
        assert values.get("x-forwarded-proto") == "$scheme", f"{path}: {values}"
        buffering = _effective(server, location, "proxy_request_buffering")
        assert buffering == [["off"]], f"{path}: uploads are buffered to disk"
        assert _effective(server, location, "proxy_http_version") == [["1.1"]], path
    api_loc = locations["/api/"]
    # WebSocket (/api/ws falls under /api/ unless it has a location of its own).
    ws = locations.get("/api/ws", api_loc)
    ws_headers = {args[0].lower(): args[1] for args in _effective(server, ws, "proxy_set_header")}
    assert ws_headers.get("upgrade") == "$http_upgrade" and "connection" in ws_headers, ws_headers
    assert _effective(server, api_loc, "proxy_buffering") == [["off"]]
    (timeout,) = _effective(server, api_loc, "proxy_read_timeout") or [["60s"]]
    wait = max(settings.LONGPOLL_MAX_WAIT, settings.SSE_PING_INTERVAL / 1000)
    assert _seconds(timeout[0]) > wait + 5, f"proxy_read_timeout {timeout[0]} <= {wait} s"
    listen = [args for n, args, _ in server if n == "listen"]
    assert any("ssl" in args and "http2" in args for args in listen) or any(
        n == "http2" and args == ["on"] for n, args, _ in server
    ), listen


# -- watchers: each follows one document on one transport and path, recording what arrives ----------
@dataclass
class Watch:
    transport: str
    path: str
    protocol: str = "?"
    events: list[tuple[float, int, str]] = field(default_factory=list)  # (arrival, seq, state)
    error: str = ""

    def add(self, progress: dict) -> bool:
        """Record one progress update; True when it is terminal."""
        self.events.append((time.monotonic(), progress["seq"], progress["state"]))
        return progress["state"] in TERMINAL

    def problems(self) -> list[str]:
        """What is wrong with what this watcher saw (empty when it followed the conversion live)."""
        if self.error:
            return [self.error]
        out = []
        seqs = [s for _, s, _ in self.events]
        if not self.events or self.events[-1][2] != "complete":
            out.append(f"did not end complete: {self.events[-1:]}")
        if seqs != sorted(set(seqs)):
            out.append(f"seqs not increasing: {seqs}")
        running = [t for t, _, state in self.events if state == "running"]
        # Buffered by a proxy, every update would arrive at once, with the end of the stream. A
        # long-poll answers once per LONGPOLL_WINDOW_MS with the newest state: fewer, but not none.
        least = 1 if self.transport == "longpoll" else 3
        if len(running) < least or self.events[-1][0] - running[0] < 1.0:
            out.append(f"not incremental: {len(running)} updates while running, {self._spread()}")
        return out

    def _spread(self) -> str:
        running = [t for t, _, state in self.events if state == "running"]
        if not running:
            return "none while running"
        return f"{self.events[-1][0] - running[0]:.1f} s from first running to the end"

    def row(self) -> str:
        bad = self.problems()
        result = "ok" if not bad else "FAIL: " + "; ".join(bad)
        cells = (self.transport, self.path, self.protocol, len(self.events), self._spread(), result)
        return "| " + " | ".join(map(str, cells)) + " |"


def _sse_parse(lines):
    """SSE messages (dicts of fields) from an iterator of text lines."""
    buf: dict = {}
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line == "":
            if buf:
                yield buf
            buf = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            buf[name] = value[1:] if value.startswith(" ") else value


def _follow_sse(w: Watch, messages) -> None:
    for msg in messages:
        if "data" not in msg or msg.get("event") == "mode":
            continue
        if w.add(json.loads(msg["data"])):
            return


def _curl(proxy, token: str, *args: str) -> list[str]:
    return [
        "curl", "-sS", "--http2", "--cacert", str(proxy.cert), "-H", f"Authorization: Bearer {token}", *args,
    ]  # fmt: skip


def _watch_sse(w: Watch, url: str, token: str, proxy=None) -> None:
    if proxy is None:
        resp = api(token).get(url, stream=True, timeout=(10, 120), headers={"Accept": "text/event-stream"})
        w.protocol = f"HTTP/1.1 {resp.status_code}"
        with resp:
            _follow_sse(w, sse_events(resp, until_terminal=True))
        return
    # HTTP/2: curl prints the response head (-D -) and then the stream as it arrives (-N).
    proc = subprocess.Popen(_curl(proxy, token, "-N", "-D", "-", url), stdout=subprocess.PIPE, text=True)
    try:
        lines = iter(proc.stdout)
        w.protocol = next(lines).strip()
        for line in lines:  # the rest of the head
            if not line.strip():
                break
        _follow_sse(w, _sse_parse(lines))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


class _Client(simple_websocket.Client):
    """simple_websocket's client, sending the port in Host as browsers do (it sends the bare host name,
    which an Origin check against the Host it received would rightly refuse)."""

    def handshake(self):
        self.host = f"{self.host}:{self.port}"
        super().handshake()


def _watch_ws(w: Watch, url: str, origin: str, token: str, doc_id: str, cafile: Path | None) -> None:
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    ws = _Client.connect(url, headers={"Authorization": f"Bearer {token}", "Origin": origin}, ssl_context=ctx)
    w.protocol = "wss (TLS HTTP/1.1 upgrade)" if cafile else "ws (HTTP/1.1 upgrade)"
    try:
        ws.send(json.dumps({"type": "subscribe", "documents": [doc_id]}))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            raw = ws.receive(timeout=5)
            if raw is None:
                continue
            msg = json.loads(raw)
            if msg["type"] == "ping":
                ws.send(json.dumps({"type": "pong"}))
            elif msg.get("document_id") == doc_id and "data" in msg and w.add(msg["data"]):
                return
    finally:
        ws.close()


def _watch_longpoll(w: Watch, base: str, token: str, doc_id: str, proxy=None) -> None:
    session = api(token)
    seq = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        url = f"{base}/api/documents/{doc_id}/status?after={seq}&wait=20"
        if proxy is None:
            resp = session.get(url, timeout=60)
            w.protocol, status, body = "HTTP/1.1", resp.status_code, resp.text
        else:
            out = subprocess.run(
                _curl(proxy, token, "-w", "\n%{http_version} %{http_code}", url),
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            body, _, tail = out.rpartition("\n")
            version, _, code = tail.partition(" ")
            w.protocol, status = f"HTTP/{version}", int(code)
        if status == 429:
            time.sleep(1)
            continue
        assert status == 200, (status, body)
        data = json.loads(body)
        if data["seq"] > seq:
            seq = data["seq"]
            if w.add(data):
                return


def _run(w: Watch, fn, *args) -> threading.Thread:
    def target():
        try:
            fn(w, *args)
        except Exception as exc:  # reported in the table and failed on below
            w.error = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=target, name=f"{w.transport}/{w.path}", daemon=True)
    t.start()
    return t


def test_every_transport_direct_and_through_nginx_h1_and_h2(proxied, tmp_path):
    """One conversion followed at once on every transport × path; each sees its updates one by one."""
    stack, proxy = proxied
    token = stack.user("alice")
    body = upload(api(token), stack.base_url, LONG_PDF, "long.pdf")
    doc_id = body["id"]
    bases = {"direct": stack.base_url, "nginx h1": proxy.http_url, "nginx h2": proxy.https_url}
    watches, threads = [], []
    for path, base in bases.items():
        h2 = proxy if path == "nginx h2" else None
        ws_url = base.replace("http", "ws", 1) + "/api/ws"
        for transport, fn, args in (
            ("sse", _watch_sse, (f"{base}/api/documents/{doc_id}/events", token, h2)),
            ("sse-multi", _watch_sse, (f"{base}/api/events?docs={doc_id}", token, h2)),
            ("ws", _watch_ws, (ws_url, base, token, doc_id, proxy.cert if h2 else None)),
            ("longpoll", _watch_longpoll, (base, token, doc_id, h2)),
        ):
            w = Watch(transport, path)
            watches.append(w)
            threads.append(_run(w, fn, *args))
    time.sleep(2)  # every watcher connected and holding the document's first state
    stack.start_worker()
    for t in threads:
        t.join(200)
    watches.sort(key=lambda w: (TRANSPORTS.index(w.transport), PATHS.index(w.path)))
    table = "\n".join(
        [
            f"{PAGES}-page PDF, one conversion followed by every watcher at once",
            "| transport | path | protocol | updates | spread | result |",
            "|---|---|---|---|---|---|",
            *(w.row() for w in watches),
        ]
    )
    (tmp_path / "transports.md").write_text(table + "\n")
    print("\n" + table)
    h2 = [w for w in watches if w.path == "nginx h2" and w.transport != "ws"]
    assert all(w.protocol.startswith("HTTP/2") for w in h2), [(w.transport, w.protocol) for w in h2]
    bad = [f"{w.transport} {w.path}: {p}" for w in watches for p in w.problems()]
    assert not bad, "\n".join(bad) + "\n" + table + "\n" + proxy.logs()[-2000:]


# -- what an operator meets ---------------------------------------------------------------------------
def test_login_over_tls_on_a_port_other_than_443(proxied):
    """Item 7: with `Host $host` the port is lost and the login's referrer check answers 400."""
    stack, proxy = proxied
    stack.user("carol")
    with requests.Session() as s:
        # Per request: requests lets REQUESTS_CA_BUNDLE override a session's own `verify`.
        ca = str(proxy.cert)
        page = s.get(proxy.https_url + "/login", timeout=10, verify=ca)
        assert page.status_code == 200
        resp = s.post(
            proxy.https_url + "/login",
            data={"csrf_token": csrf_from(page.text), "username": "carol", "password": password_for("carol")},
            headers={"Referer": proxy.https_url + "/login", "Origin": proxy.https_url},
            allow_redirects=False,
            timeout=10,
            verify=ca,
        )
        assert resp.status_code == 302, (resp.status_code, resp.text[:300])
        assert "/login" not in resp.headers["Location"], resp.headers["Location"]
        mine = s.get(proxy.https_url + "/documents", timeout=10, verify=ca, allow_redirects=False)
        assert mine.status_code == 200, mine.status_code  # signed in: the cookie came back over TLS


def _viewer(browser: Browser, console: Console, stack, proxy, name: str):
    """A signed-in Chromium page on nginx's HTTPS port, with the document's viewer open."""
    token = stack.user(name)
    ctx = browser.new_context(base_url=proxy.https_url, ignore_https_errors=True)
    ctx.set_default_timeout(20_000)
    console.base_url = proxy.https_url
    console.watch(ctx, name)
    page = ctx.new_page()
    login(page, name)
    doc_id = upload(api(token), stack.base_url, SMALL_PDF, "small.pdf")["id"]
    return ctx, page, doc_id


@pytest.mark.browser
@pytest.mark.parametrize("mode", ["ws", "sse"])
def test_viewer_over_https_follows_the_conversion_to_complete(browser, console, make_stack, make_nginx, mode):
    """Item 1: over HTTPS with WebSockets on, the viewer connects with wss:// and follows to the end."""
    settings = {**SETTINGS, "WEBSOCKET_ENABLED": "true" if mode == "ws" else "false"}
    stack = make_stack(**settings)
    proxy = make_nginx(f"127.0.0.1:{stack.ports[0]}")
    ctx, page, doc_id = _viewer(browser, console, stack, proxy, f"viewer-{mode}")
    sockets: list[dict] = []

    def on_socket(ws):
        seen = {"url": ws.url, "frames": 0}
        sockets.append(seen)
        ws.on("framereceived", lambda _: seen.__setitem__("frames", seen["frames"] + 1))

    page.on("websocket", on_socket)
    try:
        page.goto(f"/documents/{doc_id}")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=20_000)
        stack.start_worker()
        expect(page.locator("#viewer")).to_have_attribute("data-state", "complete", timeout=60_000)
        expect(page.locator("#pages figure.page")).to_have_count(3)
        if mode == "ws":
            assert any(
                s["url"] == f"wss://127.0.0.1:{proxy.tls_port}/api/ws" and s["frames"] for s in sockets
            ), sockets
        else:
            assert not sockets, sockets
        console.assert_clean()
    finally:
        ctx.close()


@pytest.mark.browser
def test_viewer_leaves_an_sse_stream_that_never_answers(browser, console, make_stack, make_nginx):
    """Item 1: an EventSource that neither opens nor errors is abandoned after the page's bound."""
    stack = make_stack(**{**SETTINGS, "WEBSOCKET_ENABLED": "false"})
    proxy = make_nginx(f"127.0.0.1:{stack.ports[0]}")
    ctx, page, doc_id = _viewer(browser, console, stack, proxy, "hung")
    held = []
    # A proxy that swallows the stream: the request is never answered, so no event ever fires.
    page.route("**/events*", lambda route: held.append(route))
    try:
        page.goto(f"/documents/{doc_id}")
        page.wait_for_function("() => !!window.livedoc")
        realtime = json.loads(page.locator("#viewer").get_attribute("data-realtime"))
        bound = realtime.get("connectTimeout", 10_000)
        # Abandoned while the document still waits for a worker (a queued document's page also asks
        # for its place in the queue, which would show it complete without any transport).
        expect(page.locator("#connection")).to_have_attribute(
            "data-state", re.compile("longpoll|offline"), timeout=bound + 15_000
        )
        assert held, "the stream was never requested"
        stack.start_worker()
        expect(page.locator("#viewer")).to_have_attribute("data-state", "complete", timeout=60_000)
    finally:
        ctx.close()


def test_reconnect_at_the_terminal_event_gets_204(proxied):
    """Item 6: EventSource stops only on 204; at/past the terminal event a reconnect must get one."""
    stack, proxy = proxied
    token = stack.user("dave")
    session = api(token)
    stack.start_worker()
    first = upload(session, stack.base_url, SMALL_PDF, "a.pdf")
    second = upload(session, stack.base_url, SMALL_PDF, "b.pdf")
    done = [poll_until_terminal(session, stack.base_url, b, timeout=120) for b in (first, second)]
    assert [d["state"] for d in done] == ["complete", "complete"]
    end = done[0]["seq"]
    for base in (stack.base_url, proxy.http_url):
        url = f"{base}/api/documents/{first['id']}/events"
        for last, status in ((end, 204), (end + 5, 204), (end - 1, 200), (None, 200)):
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            with session.get(url, headers=headers, stream=True, timeout=30) as resp:
                assert resp.status_code == status, (base, last, resp.status_code)
                if status == 200:
                    events = [m for m in sse_events(resp) if "data" in m]
                    assert events[-1]["event"] == "complete" and events[-1]["id"] == str(end)
        # The multiplexed stream: its last event's id is the cursor at both terminal events.
        ids = f"{first['id']},{second['id']}"
        with session.get(f"{base}/api/events?docs={ids}", stream=True, timeout=30) as resp:
            assert resp.status_code == 200
            cursor = [m for m in sse_events(resp, until_terminal=False) if "data" in m][-1]["id"]
        multi = f"{base}/api/events?docs={ids}"
        with session.get(multi, headers={"Last-Event-ID": cursor}, stream=True, timeout=30) as resp:
            assert resp.status_code == 204, (base, cursor, resp.status_code)
        behind = re.sub(r":(\d+)$", lambda m: f":{int(m.group(1)) - 1}", cursor)
        with session.get(multi, headers={"Last-Event-ID": behind}, stream=True, timeout=30) as resp:
            assert resp.status_code == 200, (base, behind)
            assert [m["event"] for m in sse_events(resp, until_terminal=False) if "data" in m] == ["complete"]


def test_a_graceful_reload_mid_stream_through_nginx(make_stack, make_nginx):
    """gunicorn HUP while viewers follow through nginx (plain and TLS): each reconnects once, promptly,
    through the proxy to the new worker, and follows the conversion to complete."""
    import signal

    from tests.support import wait_for
    from tests.support.streams import Viewer, slow_pdf

    stack = make_stack(**{**SETTINGS, "SSE_RETRY": "3000", "RENDER_DPI": "300"})
    proxy = make_nginx(f"127.0.0.1:{stack.ports[0]}")
    token = stack.user("reloaded")
    body = upload(api(token), stack.base_url, slow_pdf(250))
    viewers = []
    for name, base in (("h1", proxy.http_url), ("tls", proxy.https_url)):
        v = Viewer(name, token, base, body["events_url"], deadline=180, read_timeout=30)
        # The session's own CA: requests lets REQUESTS_CA_BUNDLE from the environment override it.
        v.session.trust_env = False
        v.session.verify = str(proxy.cert)
        viewers.append(v)
        v.start()
    stack.start_worker()
    try:
        wait_for(
            lambda: all(v.latest and v.latest["stage"] == "rendering" for v in viewers), 90, what="rendering"
        )
    except AssertionError:
        raise AssertionError([(v.name, v.latest, v.failures[-3:], v.connects) for v in viewers]) from None
    ends = [len(v.stream_ends) for v in viewers]
    hup, hup_wall = time.monotonic(), time.time()
    stack.webs[0].send(signal.SIGHUP)
    wait_for(lambda: all(len(v.stream_ends) > n for v, n in zip(viewers, ends)), 15, 0.02, what="streams end")

    def first_after(v, n):
        ended = v.stream_ends[n] - hup
        later = [t - hup_wall for t, _ in list(v.received) if t - hup_wall > ended]
        return min(later) if later else None

    wait_for(
        lambda: all(first_after(v, n) is not None for v, n in zip(viewers, ends)),
        30,
        0.05,
        what="events again",
    )
    delays = [first_after(v, n) for v, n in zip(viewers, ends)]
    print(f"\nfirst event after the HUP through nginx (h1, tls): {', '.join(f'{d:.2f} s' for d in delays)}")
    for v in viewers:
        v.join(180)
        assert v.final is not None and v.final["state"] == "complete", (v.name, v.failures, v.latest)
    # The stopping worker tells EventSource to come back at once (retry 50-1000 ms), not after 3 s.
    assert max(delays) < 3.0, delays
