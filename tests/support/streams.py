"""Helpers for tests against a live stack: uploads, status waits, SSE streams and EventSource-like viewers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import requests

from tests.live import api, sse_events
from tests.pdfgen import make_pdf
from tests.support import TERMINAL, TRANSIENT, wait_for

SMALL_PDF = make_pdf(["one", "two", "three"])


def upload(session: requests.Session, base: str, data: bytes = SMALL_PDF, name: str = "doc.pdf") -> dict:
    """Upload a PDF with the API; returns the 201's body."""
    resp = session.post(f"{base}/api/documents", files={"file": (name, data, "application/pdf")}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def status_of(session: requests.Session, base: str, body: dict) -> dict:
    """The document's status (GET status_url)."""
    return session.get(base + body["status_url"], timeout=10).json()


def wait_status(
    session: requests.Session,
    base: str,
    body: dict,
    test: Callable[[dict], bool],
    timeout: float = 90,
    interval: float = 0.05,
    what: str = "the state wanted",
) -> dict:
    """Poll the document's status until test(status) holds; returns that status."""
    return wait_for(
        lambda: (lambda st: st if test(st) else None)(status_of(session, base, body)),
        timeout,
        interval,
        what=f"{body['status_url']}: {what}",
    )


def poll_until_terminal(session: requests.Session, base: str, body: dict, timeout: float = 60) -> dict:
    """Poll the document's status until it is complete or failed; returns that status."""
    return wait_status(session, base, body, lambda st: st["state"] in TERMINAL, timeout, 0.2, what="finished")


def wait_document(
    session: requests.Session,
    base: str,
    doc_id: str,
    test: Callable[[dict], bool],
    timeout: float = 60,
    interval: float = 0.2,
    what: str = "the state wanted",
) -> dict:
    """Poll GET /api/documents/<id> (not rate-limited like the status) until test(body) holds."""

    def check() -> dict | None:
        body = session.get(f"{base}/api/documents/{doc_id}", timeout=10).json()
        return body if test(body) else None

    return wait_for(check, timeout, interval, what=f"document {doc_id}: {what}")


def open_stream(
    session: requests.Session, base: str, body: dict, last_event_id: int | None = None, timeout: float = 30
) -> requests.Response:
    """Open the document's SSE stream (with Last-Event-ID when given), unread."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return session.get(base + body["events_url"], headers=headers, stream=True, timeout=timeout)


def slow_pdf(pages: int) -> bytes:
    """A PDF of `pages` text-heavy pages: slow enough to render that faults land mid-conversion."""
    return make_pdf([f"Page {i} of a long document\n" + "text " * 40 for i in range(1, pages + 1)])


def settled_status(session: requests.Session, base: str, body: dict, timeout: float = 60) -> dict:
    """The document's status once it is terminal and stays so: the true final state."""

    def terminal():
        status = session.get(base + body["status_url"], timeout=5).json()
        return status if status["state"] in TERMINAL else None

    first = wait_for(terminal, timeout, 0.25, what=f"document {body['id']} terminal", ignore=TRANSIENT)
    # Checks that nothing moves over a window, so a fixed wait: anything still moving would change
    # seq within a poll interval or two.
    time.sleep(1.0)
    again = session.get(base + body["status_url"], timeout=5).json()
    assert (again["state"], again["seq"]) == (first["state"], first["seq"]), (first, again)
    return again


class Viewer(threading.Thread):
    """An EventSource-like SSE client in a thread (one browser: its own HTTP connection pool).

    Like EventSource plus static/js/feed.js, it keeps the last event id, sends it as Last-Event-ID
    when it reconnects, waits the server's `retry:` between attempts, ignores events whose seq is not
    newer than what it already applied, and stops at the first newer complete/error event.
    """

    def __init__(
        self, name: str, token: str, bases, events_url: str, deadline: float = 120, read_timeout: float = 5.0
    ):
        super().__init__(name=name, daemon=True)
        self.session = api(token)
        self.bases = bases if callable(bases) else (lambda: bases)
        self.events_url = events_url
        self.deadline = time.monotonic() + deadline
        self.read_timeout = read_timeout
        self.retry = 3.0
        self.last_id: str | None = None
        self.seq = 0
        self.applied: list[dict] = []
        self.received: list[tuple[float, dict]] = []  # (wall-clock time of arrival, progress)
        self.ignored: list[dict] = []  # events whose seq was not above the newest applied one
        self.connects = 0
        self.connected = False
        self.stream_ends: list[float] = []  # monotonic times at which an open stream ended
        self.failures: list[str] = []
        self.final: dict | None = None
        self.stopped = threading.Event()
        self.opened = threading.Event()

    @property
    def latest(self) -> dict | None:
        """The newest progress applied, if any."""
        return self.applied[-1] if self.applied else None

    def run(self) -> None:
        try:
            while not self.stopped.is_set() and time.monotonic() < self.deadline:
                if self._connect_once():
                    return
                time.sleep(self.retry)
        finally:
            self.session.close()

    def _connect_once(self) -> bool:
        """One connection; True when the viewer is done (terminal event, or a 204)."""
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        try:
            resp = self.session.get(
                self.bases() + self.events_url, headers=headers, stream=True, timeout=(3, self.read_timeout)
            )
        except requests.RequestException as exc:
            self.failures.append(type(exc).__name__)
            return False
        if resp.status_code != 200:
            self.failures.append(str(resp.status_code))
            resp.close()
            return resp.status_code == 204  # EventSource gives up for good on a 204
        self.connects += 1
        self.connected = True
        self.opened.set()
        try:
            for msg in sse_events(resp, until_terminal=False):
                if "retry" in msg:
                    self.retry = int(msg["retry"]) / 1000
                if "id" in msg:
                    self.last_id = msg["id"]
                if msg.get("event") in ("progress", "complete", "error") and "data" in msg:
                    prog = json.loads(msg["data"])
                    self.received.append((time.time(), prog))
                    if prog["seq"] <= self.seq:
                        self.ignored.append(prog)  # the page's script drops it as a replay
                        continue
                    self.seq = prog["seq"]
                    self.applied.append(prog)
                    if prog["state"] in TERMINAL:
                        self.final = prog
                        return True
                if self.stopped.is_set():
                    return True
        except (requests.RequestException, OSError):
            self.failures.append("read")
        finally:
            self.connected = False
            self.stream_ends.append(time.monotonic())
            resp.close()
        return False

    def finish(self, timeout: float) -> dict | None:
        """Wait up to timeout for the viewer to end, then stop it; returns its final progress."""
        self.join(timeout)
        self.stopped.set()
        return self.final
