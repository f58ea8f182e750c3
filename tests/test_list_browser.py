"""'My documents' live over ONE connection: Playwright driving Debian chromium against real processes.

Browsers allow six HTTP/1.1 connections per host, so a list of ten running conversions must not open
ten EventSources. Each test uploads documents with the worker stopped, opens the list page, starts
the worker and watches every row reach its final state without a reload, while it counts the
real-time connections twice: in the browser (requests and WebSockets it opens) and on the server
(the admin stats endpoint, which sums every web process's stream hub). Each test runs once with SSE
(the default) and once with the WebSocket enabled by the runtime flags override.
"""

from __future__ import annotations

import re
import time

import pytest
import requests
from playwright.sync_api import Page, expect

from livedoc import flags
from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import wait_for
from tests.support.browser import assert_not_reloaded, login, mark_page

# Ten conversions watched to the end, some across a server restart.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

SETTINGS = {"RENDER_DPI": "250"}  # a conversion takes a couple of seconds: progress is visible
DOCS = 10
PAGES = 20
PDF = make_pdf([f"Page {i} of a list test document\nLine two of page {i}" for i in range(1, PAGES + 1)])
# What the server names each transport in its stats while this page is open.
STAT_NAME = {"sse": "sse-multi", "ws": "ws"}
# Network errors a server restart provokes on purpose (never CSP violations or script errors).
RESTART_NOISE = (
    r"net::ERR_CONNECTION_(REFUSED|RESET)|net::ERR_EMPTY_RESPONSE"
    r"|net::ERR_INCOMPLETE_CHUNKED_ENCODING|WebSocket connection to .* failed"
)

ROW_STATES = "() => Array.from(document.querySelectorAll('#doc-list tbody tr')).map(tr => tr.dataset.state)"
# Records every state each row shows, from inside the page (test code, outside the app's CSP).
RECORDER = """() => {
  const rec = window.__rec = {rows: {}, live: []};
  const heard = new WeakSet();  // the live region keeps only its last lines: record each once
  const snap = () => {
    document.querySelectorAll('#doc-list tbody tr[data-doc-id]').forEach((tr) => {
      const bar = tr.querySelector('[role="progressbar"]');
      const list = rec.rows[tr.dataset.docId] = rec.rows[tr.dataset.docId] || [];
      const v = tr.dataset.state + ' ' + bar.getAttribute('aria-valuenow');
      if (list[list.length - 1] !== v) list.push(v);
    });
    document.querySelectorAll('#list-live p').forEach((p) => {
      if (!heard.has(p)) { heard.add(p); rec.live.push(p.textContent); }
    });
  };
  snap();
  new MutationObserver(snap).observe(document.querySelector('#doc-page'),
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(params=["sse", "ws"])
def transport(request) -> str:
    return request.param


@pytest.fixture
def deploy(make_stack, flag_conn, transport):
    """A stack (web server only) with the transport under test switched on."""

    def make():
        stack = make_stack(**SETTINGS)
        if transport == "ws":
            flags.set_override(flag_conn(stack), mode="sse", websocket=True)
        return stack

    return make


# -- helpers ---------------------------------------------------------------------------------------
class Traffic:
    """The real-time connections a page opens: HTTP requests by kind, and WebSockets."""

    def __init__(self, page: Page):
        self.urls: list[str] = []  # GET requests only: the upload's POST is not a real-time connection
        self.sockets: list[str] = []
        page.on("request", lambda req: req.method == "GET" and self.urls.append(req.url))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))

    def count(self, pattern: str) -> int:
        return sum(1 for u in self.urls if re.search(pattern, u))

    @property
    def multi_streams(self) -> int:
        return self.count(r"/api/events(\?|$)")

    @property
    def single_streams(self) -> int:
        return self.count(r"/api/documents/[0-9a-f]+/(events|status)")

    @property
    def list_polls(self) -> int:
        return self.count(r"/api/documents(\?|$)")


def upload_api(stack, token: str, n: int) -> list[str]:
    """Upload n copies of the test PDF with the API; returns their ids, oldest first."""
    session = api(token)
    ids = []
    for i in range(n):
        resp = session.post(
            f"{stack.base_url}/api/documents",
            files={"file": (f"doc-{i:02d}.pdf", PDF, "application/pdf")},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
    return ids


def server_stats(stack, admin_token: str) -> dict:
    resp = requests.get(
        f"{stack.base_url}/api/realtime/stats", headers={"Authorization": f"Bearer {admin_token}"}, timeout=5
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def api_states(stack, token: str) -> dict[str, dict]:
    resp = api(token).get(f"{stack.base_url}/api/documents", timeout=5)
    assert resp.status_code == 200, resp.text
    return {d["id"]: d["progress"] for d in resp.json()["documents"]}


def open_list(page: Page, name: str, transport: str) -> None:
    """Log in, land on the list, and wait until its one live connection is up."""
    login(page, name)
    expect(page.locator("#doc-page")).to_have_attribute("data-mode", transport)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert page.evaluate("() => window.livedoc.mode()") == transport
    page.evaluate(RECORDER)
    mark_page(page)


def wait_all_complete(page: Page, n: int, timeout: float = 120_000) -> None:
    page.wait_for_function(
        f"() => {{ const s = ({ROW_STATES})(); "
        f"return s.length === {n} && s.every((x) => x === 'complete'); }}",
        timeout=timeout,
        polling=100,
    )


def assert_one_connection(traffic: Traffic, transport: str) -> None:
    if transport == "ws":
        assert len(traffic.sockets) == 1, traffic.sockets
        assert traffic.multi_streams == 0
    else:
        assert traffic.multi_streams == 1, [u for u in traffic.urls if "/api/" in u]
        assert traffic.sockets == []
    assert traffic.single_streams == 0, "the list opened per-document streams"
    assert traffic.list_polls == 0, "the list fell back to polling"


# -- 1. ten conversions, one connection -------------------------------------------------------------
def test_ten_conversions_update_live_over_one_connection(deploy, transport, open_context, console):
    stack = deploy()
    token = stack.user("amy")
    admin = stack.user("ops", admin=True)
    ids = upload_api(stack, token, DOCS)

    page = open_context(stack, "amy").new_page()
    traffic = Traffic(page)
    open_list(page, "amy", transport)
    rows = page.locator("#doc-list tbody tr")
    expect(rows).to_have_count(DOCS)
    assert page.evaluate(ROW_STATES) == ["queued"] * DOCS
    assert sorted(page.evaluate("() => window.livedoc.watching()")) == sorted(ids)
    first = rows.first
    expect(first.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "0")
    expect(first.locator("[role=progressbar]")).to_have_attribute("aria-label", "Progress of doc-09.pdf")
    expect(page.locator("#list-live")).to_have_attribute("aria-live", "polite")

    stack.start_worker()
    # While anything converts, the server sees exactly one connection: this page's.
    samples = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = page.evaluate(ROW_STATES)
        if all(s == "complete" for s in states):
            break
        stats = server_stats(stack, admin)
        samples.append((states, stats["connectionsByTransport"], stats["local"]["connectionsByTransport"]))
        page.wait_for_timeout(300)  # the sampling period
    wait_all_complete(page, DOCS, timeout=1_000)
    converting = [s for s in samples if "running" in s[0]]
    print(
        f"{len(samples)} stats samples, {len(converting)} while a row was running; "
        f"first: {samples[0][1:]}, last: {samples[-1][1:]}"
    )
    assert len(converting) >= 3, "too few samples taken while converting"
    expected = {STAT_NAME[transport]: 1}
    # Never more than this page's one connection. The very last samples may already see it gone
    # (the stream ends with its last document, a moment before the page has drawn that row), and
    # the all-hosts figure lags the local one by up to a poll interval.
    for states, everywhere, local in samples:
        assert everywhere in (expected, {}) and local in (expected, {}), (states, everywhere, local)
    assert sum(1 for _, everywhere, local in converting if everywhere == local == expected) >= 3
    assert_one_connection(traffic, transport)

    # Every row moved live: queued → running with a moving bar → complete at 100 %, never back.
    rec = page.evaluate("() => window.__rec")
    for doc_id in ids:
        seen = rec["rows"][doc_id]
        assert seen[0] == "queued 0" and seen[-1] == "complete 100", seen
        values = [int(v.split()[1]) for v in seen]
        assert values == sorted(values), seen
    assert sum(len(v) for v in rec["rows"].values()) >= 3 * DOCS, rec["rows"]
    for row in rows.all():
        expect(row.locator(".doc-state")).to_have_text("complete")
        expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
        expect(row.locator(".doc-percent")).to_have_text("100%")
        expect(row.locator("a.doc-link")).to_have_attribute("href", re.compile(r"^/documents/[0-9a-f]{32}$"))
    announced = rec["live"]
    assert sorted(announced) == sorted(
        f"doc-{i:02d}.pdf: conversion complete, {PAGES} pages" for i in range(DOCS)
    ), announced
    expect(page.locator("#connection")).to_have_text("Up to date")
    # Done: the connection is closed, not left open or reconnecting. A window in which the page must
    # not reconnect (checked by the traffic below), so a fixed wait.
    page.wait_for_timeout(1500)
    assert server_stats(stack, admin)["connectionsByTransport"] == {}
    assert_one_connection(traffic, transport)
    assert_not_reloaded(page)
    console.assert_clean()


# -- 2. an upload through the page's form joins the live feed ---------------------------------------
def test_upload_from_list_joins_the_live_feed(deploy, transport, open_context, console):
    stack = deploy()
    token = stack.user("bob")
    admin = stack.user("ops", admin=True)
    ids = upload_api(stack, token, 2)
    page = open_context(stack, "bob").new_page()
    traffic = Traffic(page)
    open_list(page, "bob", transport)

    page.set_input_files(
        "#file", files=[{"name": "from the form.pdf", "mimeType": "application/pdf", "buffer": PDF}]
    )
    page.click("#upload-form button[type=submit]")
    top = page.locator("#doc-list tbody tr").first
    expect(top.locator("a.doc-link")).to_have_text("from the form.pdf")
    expect(page.locator("#doc-list tbody tr")).to_have_count(3)
    new_id = top.get_attribute("data-doc-id")
    assert new_id not in ids
    expect(top.locator(".doc-state")).to_have_text("queued")
    expect(top.locator(".doc-kind")).to_have_text("PDF")
    expect(top.locator("a.doc-link")).to_have_attribute("href", f"/documents/{new_id}")
    expect(page.locator("#file")).to_have_value("")  # the form is ready for the next file
    expect(page.locator("#list-live")).to_contain_text("from the form.pdf uploaded; converting.")
    assert sorted(page.evaluate("() => window.livedoc.watching()")) == sorted([*ids, new_id])
    assert page.url.endswith("/documents")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")

    stack.start_worker()
    wait_all_complete(page, 3, timeout=90_000)
    rec = page.evaluate("() => window.__rec")
    assert rec["rows"][new_id][-1] == "complete 100" and len(rec["rows"][new_id]) >= 3, rec["rows"][new_id]
    if transport == "ws":
        assert len(traffic.sockets) == 1, "the new document was not subscribed on the open socket"
    else:
        # The stream was reopened once, naming the new document and resuming with the cursor.
        streams = [u for u in traffic.urls if re.search(r"/api/events\?", u)]
        assert len(streams) == 2, streams
        assert new_id not in streams[0] and new_id in streams[1]
        assert "cursor=" not in streams[0] and "cursor=" in streams[1]
    assert traffic.single_streams == 0 and traffic.list_polls == 0
    page.wait_for_timeout(1500)  # a window in which the page must not open another connection
    assert server_stats(stack, admin)["connectionsByTransport"] == {}
    assert_not_reloaded(page)
    console.assert_clean()


def test_upload_error_is_shown_on_the_list(make_stack, signed_in, console):
    stack = make_stack(**SETTINGS)
    page = signed_in(stack, "cal")
    page.evaluate(RECORDER)
    mark_page(page)
    console.allow(r"Failed to load resource: the server responded with a status of 4\d\d")
    page.set_input_files(
        "#file",
        files=[
            {
                "name": "notes.exe",
                "mimeType": "application/octet-stream",
                "buffer": b"MZ\x90\x00 not a document",
            }
        ],
    )
    page.click("#upload-form button[type=submit]")
    alert = page.locator("#upload-error")
    expect(alert).to_be_visible()
    expect(alert).to_have_attribute("role", "alert")
    expect(page.locator("#file")).to_have_attribute("aria-describedby", "file-help upload-error")
    expect(page.locator("#doc-list tbody tr")).to_have_count(0)
    expect(page.locator("#no-docs")).to_be_visible()
    assert_not_reloaded(page)
    console.assert_clean()


# -- 3. a forced disconnect loses no document's final state -----------------------------------------
def test_server_restart_loses_no_final_state(deploy, transport, open_context, console):
    stack = deploy()
    token = stack.user("dee")
    ids = upload_api(stack, token, 6)
    page = open_context(stack, "dee").new_page()
    open_list(page, "dee", transport)
    console.allow(RESTART_NOISE)

    stack.start_worker()
    # Cut the connection with some documents finished and some still converting.
    page.wait_for_function(
        f"() => ({ROW_STATES})().filter((s) => s === 'complete').length >= 1", timeout=60_000, polling=50
    )
    stack.webs[0].stop()
    expect(page.locator("#connection")).not_to_have_attribute("data-state", "live", timeout=15_000)
    # Conversions go on while the server is away: their final states must still reach the page. The
    # length of the outage, not a wait for something.
    time.sleep(2)
    stack.start_web(port=stack.ports[0])
    wait_all_complete(page, 6, timeout=120_000)

    truth = api_states(stack, token)
    for doc_id in ids:
        row = page.locator(f'tr[data-doc-id="{doc_id}"]')
        expect(row).to_have_attribute("data-state", "complete")
        expect(row).to_have_attribute("data-seq", str(truth[doc_id]["seq"]))
        expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    rec = page.evaluate("() => window.__rec")
    for doc_id in ids:
        values = [int(v.split()[1]) for v in rec["rows"][doc_id]]
        assert values == sorted(values), rec["rows"][doc_id]
    print("mode after the restart:", page.evaluate("() => window.livedoc.mode()"))
    expect(page.locator("#connection")).to_have_text("Up to date")
    assert_not_reloaded(page)
    console.assert_clean()


# -- 4. the transport chain on the list page --------------------------------------------------------
def test_refused_websocket_falls_back_to_one_sse_stream(make_stack, flag_conn, open_context, console):
    """The page was rendered for ws, but the upgrade is refused by the time the script runs."""
    stack = make_stack(**SETTINGS)
    conn = flag_conn(stack)
    flags.set_override(conn, mode="sse", websocket=True)
    token = stack.user("fin")
    upload_api(stack, token, 3)
    page = open_context(stack, "fin").new_page()
    traffic = Traffic(page)
    console.allow(r"WebSocket connection to .*/api/ws' failed")

    def late_script(route):
        # The operator switches the WebSocket off between the page load and its script.
        if page.url.endswith("/documents"):
            flags.set_override(conn, websocket=False)
        route.continue_()

    page.route("**/static/js/main.js", late_script)
    login(page, "fin")
    expect(page.locator("#doc-page")).to_have_attribute("data-mode", "ws")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    assert page.evaluate("() => window.livedoc.mode()") == "sse"
    page.evaluate(RECORDER)
    mark_page(page)
    stack.start_worker()
    wait_all_complete(page, 3, timeout=90_000)
    # One refused socket, then one stream for the whole list (a second /api/events request here
    # means the server closed the multiplexed stream on the flag change: it must stay open).
    assert len(traffic.sockets) == 1 and traffic.multi_streams == 1, (traffic.sockets, traffic.urls)
    assert traffic.single_streams == 0 and traffic.list_polls == 0
    assert_not_reloaded(page)
    console.assert_clean()


def test_operator_switch_moves_the_list_down_and_it_still_completes(
    make_stack, flag_conn, open_context, console
):
    """ws → sse (the WebSocket switched off) → poll (real-time off), each over one connection."""
    stack = make_stack(**SETTINGS)
    conn = flag_conn(stack)
    flags.set_override(conn, mode="sse", websocket=True)
    token = stack.user("gil")
    admin = stack.user("ops", admin=True)
    ids = upload_api(stack, token, 3)
    page = open_context(stack, "gil").new_page()
    traffic = Traffic(page)
    open_list(page, "gil", "ws")

    flags.set_override(conn, websocket=False)
    page.wait_for_function(
        "() => window.livedoc.mode() === 'sse' && window.livedoc.connection() === 'live'", timeout=10_000
    )
    # The hub publishes its stats every poll tick.
    wait_for(
        lambda: server_stats(stack, admin)["connectionsByTransport"] == {"sse-multi": 1},
        10,
        what="one multiplexed stream counted",
    )
    assert len(traffic.sockets) == 1 and traffic.multi_streams == 1

    flags.set_override(conn, mode="off")
    page.wait_for_function("() => window.livedoc.mode() === 'poll'", timeout=10_000)
    expect(page.locator("#connection")).to_have_attribute("data-state", "polling")
    stack.start_worker()
    wait_all_complete(page, 3, timeout=90_000)
    truth = api_states(stack, token)
    for doc_id in ids:
        row = page.locator(f'tr[data-doc-id="{doc_id}"]')
        expect(row).to_have_attribute("data-seq", str(truth[doc_id]["seq"]))
    assert traffic.multi_streams == 1 and traffic.single_streams == 0 and traffic.list_polls >= 1
    assert_not_reloaded(page)
    console.assert_clean()
