"""The app as a person uses it: Playwright (sync API) driving Debian chromium against real processes.

Every test starts its own deployment (the `stack` fixture: gunicorn gevent, Redis, no worker) and starts
the worker only when the conversion should begin, so what the browser sees is deterministic. PDFs are
rendered at 250 DPI so that a few dozen pages take long enough for the progress bar to move visibly.

Every page is watched for JavaScript errors and console errors (a CSP violation is one): any of them
fails the test, except network errors a test provokes on purpose (the server restart).
Screenshots of the viewer go to SCREENSHOT_DIR (tests/support/browser.py).
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect
from rq.job import Job

from livedoc import flags, jobs, progress
from tests.live import password_for
from tests.pdfgen import make_pdf
from tests.support.browser import assert_not_reloaded, login, mark_page, screenshot

# Sixty-page conversions at 250 DPI watched to the end, some across a server restart.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

SETTINGS = {"RENDER_DPI": "250"}
PAGES = 60
BIG_PDF = make_pdf(
    [f"Page {i} of the browser test document\nLine two of page {i}" for i in range(1, PAGES + 1)]
)
SMALL_PDF = make_pdf(["one", "two", "three"])
CORRUPT_PDF = b"%PDF-1.7\n garbage"
DAMAGED = re.compile(r"^\w+( PDF)? is damaged and cannot be read\.$")  # "This PDF is damaged…"
DOC_URL = re.compile(r"/documents/([0-9a-f]{32})$")

# Records what the viewer shows, from inside the page (test code, so the app's CSP does not apply).
RECORDER = """() => {
  const rec = window.__rec = {valuenow: [], valuetext: [], stage: [], pageCount: [], live: [],
                              conn: [], state: []};
  const $ = (s) => document.querySelector(s);
  const push = (list, v) => { if (list[list.length - 1] !== v) list.push(v); };
  const snap = () => {
    push(rec.valuenow, $('#progress').getAttribute('aria-valuenow'));
    push(rec.valuetext, $('#progress').getAttribute('aria-valuetext'));
    push(rec.stage, $('#stage').textContent);
    push(rec.pageCount, $('#page-count').textContent);
    push(rec.live, $('#live-region').textContent);
    push(rec.conn, $('#connection').dataset.state);
    push(rec.state, $('#viewer').dataset.state);
  };
  snap();
  new MutationObserver(snap).observe($('#viewer'), {subtree: true, childList: true, attributes: true,
                                                     characterData: true});
}"""

FOCUS_STYLE = """() => {
  const el = document.activeElement;
  const cs = getComputedStyle(el);
  return {id: el.id, tag: el.tagName, text: (el.textContent || '').trim().slice(0, 40),
          style: cs.outlineStyle, width: parseFloat(cs.outlineWidth) || 0};
}"""


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def stack(make_stack):
    """This module's deployment: a web server only, until the test starts the worker."""
    return make_stack(**SETTINGS)


# -- helpers ---------------------------------------------------------------------------------------
def upload(page: Page, data: bytes, name: str = "report.pdf") -> str:
    """Upload through the form on 'My documents'; returns the document id the viewer shows."""
    if not page.url.endswith("/documents"):
        page.goto("/documents")
    rows = page.locator("#doc-list tbody tr")
    before = rows.count()
    page.set_input_files("#file", files=[{"name": name, "mimeType": "application/pdf", "buffer": data}])
    page.click("#upload-form button[type=submit]")
    # The list sends the form with fetch and adds the new row at the top: open its viewer.
    expect(rows).to_have_count(before + 1)
    link = rows.first.locator("a.doc-link")
    expect(link).to_have_text(name)
    link.click()
    page.wait_for_url(DOC_URL)
    return DOC_URL.search(page.url).group(1)


def watch_upload(page: Page, data: bytes, name: str) -> str:
    """Upload through the form, wait for the viewer's live connection and record what it shows."""
    doc_id = upload(page, data, name)
    wait_connection(page, "live")
    record(page)
    return doc_id


def record(page: Page) -> None:
    """Start recording what the viewer shows (after its script has started)."""
    page.wait_for_function("() => !!window.livedoc")
    page.evaluate(RECORDER)
    mark_page(page)


def recorded(page: Page) -> dict:
    return page.evaluate("() => window.__rec")


def wait_connection(page: Page, state: str, timeout: float = 15_000) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", state, timeout=timeout)


def assert_complete_with_pages(page: Page, pages: int, timeout: float = 60_000) -> None:
    expect(page.locator("#viewer")).to_have_attribute("data-state", "complete", timeout=timeout)
    expect(page.locator("#pages #pages-heading")).to_contain_text(f"({pages})")
    expect(page.locator("#pages figure.page")).to_have_count(pages)
    # The first page image really loads (page files are served to the owner).
    page.locator("#page-1 img").scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('#page-1 img').naturalWidth > 0")
    expect(page.locator("#progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#error")).to_be_hidden()


def fail_like_a_dead_worker(stack, conn, doc_id: str) -> None:
    """What RQ leaves when the worker running attempt 1 dies: job out of the queue, status failed,
    progress still 'running'. The reader then reports a retryable `worker_lost` failure."""
    job_id = jobs.job_id(doc_id, 1)
    jobs.queue(conn, stack.env.get("QUEUE_NAME", "livedoc")).remove(job_id)
    job = Job.fetch(job_id, connection=conn, serializer=jobs.SERIALIZER)
    job.meta[progress.META_KEY].update(
        state="running",
        stage="rendering",
        seq=2,
        percent=20,
        page=3,
        pages=3,
        message="Rendering page 3 of 3",
    )
    job.save_meta()
    job.set_status("failed")


def focus_style(page: Page) -> dict:
    return page.evaluate(FOCUS_STYLE)


def assert_focus_visible(page: Page) -> None:
    f = focus_style(page)
    assert f["style"] != "none" and f["width"] > 0, f"focus not visible on {f}"


def tab_to(page: Page, selector: str, limit: int = 40, every_stop_visible: bool = False) -> int:
    """Press Tab until the focused element matches selector; returns the number of presses.
    With every_stop_visible, each element passed on the way must show its focus too."""
    for n in range(1, limit + 1):
        page.keyboard.press("Tab")
        if every_stop_visible:
            assert_focus_visible(page)
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return n
    raise AssertionError(f"{selector} not reachable with Tab (last focus {focus_style(page)})")


# -- 1. the happy path ------------------------------------------------------------------------------
def test_upload_shows_live_progress_then_pages_without_reload(stack, open_context, console):
    stack.user("alice")
    # Reduced motion: the bar's width is not animated, so the screenshots show the exact value.
    page = open_context(stack, "alice", reduced_motion="reduce").new_page()
    login(page, "alice")
    upload(page, BIG_PDF, "sixty pages.pdf")

    expect(page.locator("#progress")).to_have_attribute("role", "progressbar")
    expect(page.locator("#live-region")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#viewer")).to_have_attribute("data-state", "queued")
    wait_connection(page, "live")
    record(page)
    # The reader is busy in the toolbar while the pages stream in: nothing may take the focus away.
    page.locator("#find").focus()

    started = time.monotonic()
    stack.start_worker()
    # Mid-conversion: rendering, a real "page i of n" on screen.
    page.wait_for_function(
        """() => {
        const v = +document.querySelector('#progress').getAttribute('aria-valuenow');
        return (v >= 20 && v < 90) || document.querySelector('#viewer').dataset.state !== 'running'
               && document.querySelector('#viewer').dataset.state !== 'queued';
    }""",
        polling=25,
        timeout=60_000,
    )
    mid = page.evaluate("""() => {
        const q = (s) => document.querySelector(s);
        return {state: q('#viewer').dataset.state, count: q('#page-count').textContent,
                stage: q('#stage').textContent, now: +q('#progress').getAttribute('aria-valuenow'),
                fill: 100 * q('.progress-fill').getBoundingClientRect().width
                      / q('#progress').getBoundingClientRect().width};
    }""")
    screenshot(page, "viewer-converting.png")
    after = page.evaluate("() => document.querySelector('#viewer').dataset.state")
    assert mid["state"] == after == "running", f"conversion ended before the mid-way screenshot: {mid}"
    assert abs(mid["fill"] - mid["now"]) < 2, f"the bar's width does not match its value: {mid}"
    assert mid["stage"] == "Rendering"
    assert re.fullmatch(rf"page \d+ of {PAGES}", mid["count"]), mid

    assert_complete_with_pages(page, PAGES)
    elapsed = time.monotonic() - started
    print(f"conversion seen by the browser in {elapsed:.2f} s")
    expect(page.locator("#live-region")).to_have_text(f"Conversion complete, {PAGES} pages")
    expect(page.locator("#find")).to_be_focused()  # announced, not focused: the reader is reading
    page.evaluate("() => window.scrollTo(0, 0)")
    screenshot(page, "viewer-complete.png")

    rec = recorded(page)
    print("aria-valuenow seen:", rec["valuenow"])
    print("announcements:", rec["live"])
    values = [int(v) for v in rec["valuenow"]]
    assert len(set(values)) >= 3, f"the bar barely moved: {values}"
    assert values == sorted(values), f"the bar went back: {values}"
    assert values[-1] == 100
    assert any(re.fullmatch(rf"Rendering page \d+ of {PAGES}, \d+%", t) for t in rec["valuetext"]), rec
    assert rec["valuetext"][-1] == f"Complete page {PAGES} of {PAGES}, 100%"
    assert len([c for c in rec["pageCount"] if re.fullmatch(rf"page \d+ of {PAGES}", c)]) >= 3
    assert "Rendering" in rec["stage"]
    assert any(t.startswith("Rendering") for t in rec["live"]), rec["live"]
    assert rec["state"][-1] == "complete" and "running" in rec["state"]
    expect(page.locator("#connection")).to_have_text("Up to date")
    assert_not_reloaded(page)
    console.assert_clean()


# -- 2. failures ------------------------------------------------------------------------------------
def test_corrupt_pdf_shows_message_without_retry(stack, signed_in, console):
    page = signed_in(stack, "bea")
    watch_upload(page, CORRUPT_PDF, "broken.pdf")
    stack.start_worker()

    expect(page.locator("#viewer")).to_have_attribute("data-state", "failed", timeout=30_000)
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-message")).to_have_text(DAMAGED)
    expect(page.locator("#retry")).to_have_count(0)
    expect(page.locator("#live-region")).to_have_text(re.compile(r"^Conversion failed: .*damaged"))
    screenshot(page, "viewer-failed.png")
    assert_not_reloaded(page)

    # A fresh load of the failed document says the same, server-rendered.
    page.reload()
    expect(page.locator("#error-message")).to_have_text(DAMAGED)
    expect(page.locator("#retry")).to_have_count(0)
    console.assert_clean()


def test_retryable_failure_offers_retry_and_the_retry_completes(stack, signed_in, console, flag_conn):
    conn = flag_conn(stack)
    page = signed_in(stack, "cyd")
    doc_id = watch_upload(page, SMALL_PDF, "three.pdf")

    fail_like_a_dead_worker(stack, conn, doc_id)
    expect(page.locator("#viewer")).to_have_attribute("data-state", "failed")
    expect(page.locator("#error-message")).to_have_text("The conversion stopped unexpectedly.")
    retry = page.locator("#retry")
    expect(retry).to_be_visible()
    expect(retry).to_have_text("Try again")

    retry.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_have_attribute("data-state", "queued")
    expect(page.locator("#retry")).to_have_count(0)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#status-heading")).to_be_focused()  # the button vanished: focus kept nearby
    stack.start_worker()
    assert_complete_with_pages(page, 3)
    expect(page.locator("#status-heading")).to_be_focused()  # completion announces, never moves focus
    rec = recorded(page)
    states = rec["state"]
    assert states[0] == "queued" and states[-1] == "complete", states
    assert states.index("failed") < len(states) - 1 - states[::-1].index("queued"), states
    assert_not_reloaded(page)
    console.assert_clean()


# -- 3. real-time switched off or changed at runtime ------------------------------------------------
def test_realtime_off_at_runtime_viewer_completes_by_polling(stack, open_context, console, flag_conn):
    conn = flag_conn(stack)
    stack.user("dan")
    ctx = open_context(stack, "dan")
    page = ctx.new_page()
    login(page, "dan")
    doc_id = watch_upload(page, SMALL_PDF, "three.pdf")
    try:
        flags.set_override(conn, mode="off")  # the operator's rollback, with the page open
        wait_connection(page, "polling", timeout=5_000)
        # A viewer opened now is rendered in poll mode and polls from the start.
        late = ctx.new_page()
        late.goto(f"/documents/{doc_id}")
        expect(late.locator("#viewer")).to_have_attribute("data-mode", "poll")
        wait_connection(late, "polling", timeout=5_000)
        record(late)

        stack.start_worker()
        for p in (page, late):
            assert_complete_with_pages(p, 3)
            assert "live" not in recorded(p)["conn"][recorded(p)["conn"].index("polling") :]
            assert_not_reloaded(p)
    finally:
        flags.clear_override(conn)
    console.assert_clean()


def test_admin_mode_switch_reaches_every_open_viewer(stack, open_context, console, flag_conn):
    conn = flag_conn(stack)
    viewers = []
    for name in ("eve", "fay"):
        stack.user(name)
        page = open_context(stack, name).new_page()
        login(page, name)
        watch_upload(page, SMALL_PDF, f"{name}.pdf")
        viewers.append(page)
    stack.user("root", admin=True)
    admin = open_context(stack, "root").new_page()
    login(admin, "root")

    def switch(mode: str, transport: str, state: str, timeout: float) -> float:
        """Set the mode on the admin page; seconds until every viewer's connection is in state."""
        t0 = time.monotonic()
        admin.goto("/admin/")
        admin.check(f"input[name=mode][value={mode}]")
        admin.click("form[action$='/admin/realtime'] button[type=submit]")
        expect(admin.locator(".flash")).to_have_text(f"Real-time mode set to {mode}.")
        expect(admin.locator("#flags-transport")).to_have_text(transport)
        for page in viewers:
            wait_connection(page, state, timeout=timeout)
        return time.monotonic() - t0

    try:
        down = switch("poll", "poll", "polling", 5_000)
        # Climbing back waits a jittered quiet period (5–15 s here) so a crowd does not stampede.
        up = switch("default", "sse", "live", 45_000)
        print(f"viewers followed the switch down in {down:.1f} s and back up in {up:.1f} s")
        for page in viewers:
            conns = recorded(page)["conn"]
            assert conns.index("polling") < len(conns) - 1 - conns[::-1].index("live"), conns

        stack.start_worker()
        for page in viewers:
            assert_complete_with_pages(page, 3)
            assert_not_reloaded(page)
    finally:
        flags.clear_override(conn)
    console.assert_clean()


# -- 4. server restart ------------------------------------------------------------------------------
def test_server_restart_mid_conversion_is_survived_without_reload(stack, signed_in, console):
    page = signed_in(stack, "gus")
    watch_upload(page, BIG_PDF, "restart.pdf")
    # While the server is away the browser reports its failed connection attempts. The stream cut
    # at the old server's graceful timeout was a bug, pinned by the test below.
    console.allow(
        r"net::ERR_CONNECTION_(REFUSED|RESET)|net::ERR_EMPTY_RESPONSE"
        r"|net::ERR_INCOMPLETE_CHUNKED_ENCODING"
    )

    t0 = time.monotonic()
    stack.webs[0].stop()
    expect(page.locator("#connection")).not_to_have_attribute("data-state", "live", timeout=10_000)
    stack.start_web(port=stack.ports[0])
    stack.start_worker()
    assert_complete_with_pages(page, PAGES, timeout=90_000)
    print(f"restart to complete: {time.monotonic() - t0:.1f} s; connection states {recorded(page)['conn']}")
    values = [int(v) for v in recorded(page)["valuenow"]]
    assert values == sorted(values), values
    assert_not_reloaded(page)
    console.assert_clean()


def test_graceful_stop_ends_every_open_stream_at_once(stack, signed_in, console):
    page = signed_in(stack, "ike")
    upload(page, SMALL_PDF, "three.pdf")
    wait_connection(page, "live")
    console.allow(r"net::ERR_CONNECTION_(REFUSED|RESET)|net::ERR_EMPTY_RESPONSE")

    t0 = time.monotonic()
    stack.webs[0].stop()
    took = time.monotonic() - t0
    page.wait_for_timeout(500)  # a window for a cut stream's console error to arrive, so a fixed wait
    print(f"the old server took {took:.1f} s to stop")
    console.assert_clean()  # no stream cut mid-chunk (net::ERR_INCOMPLETE_CHUNKED_ENCODING)
    assert took < 5, f"an open stream kept the stopping server alive for {took:.1f} s"


# -- 5. keyboard only -------------------------------------------------------------------------------
def test_keyboard_only_login_upload_view_and_retry(stack, open_context, console, flag_conn):
    conn = flag_conn(stack)
    stack.user("hal")
    page = open_context(stack, "hal").new_page()
    page.goto("/login")
    if not page.evaluate("() => document.activeElement.id === 'username'"):
        tab_to(page, "#username")
    assert_focus_visible(page)
    page.keyboard.type("hal")
    page.keyboard.press("Tab")
    assert focus_style(page)["id"] == "password"
    assert_focus_visible(page)
    page.keyboard.type(password_for("hal"))
    page.keyboard.press("Enter")
    page.wait_for_url("**/documents")

    tab_to(page, "#file")
    assert_focus_visible(page)
    # A native file dialog cannot be driven: hand the file to the focused input instead.
    page.locator("*:focus").set_input_files(
        files=[{"name": "keyboard.pdf", "mimeType": "application/pdf", "buffer": SMALL_PDF}]
    )
    tab_to(page, "#upload-form button[type=submit]", limit=3)
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    # The new row appears at the top of the list; its link is the next Tab stop.
    expect(page.locator("#doc-list tbody tr")).to_have_count(1)
    tab_to(page, "#doc-list tbody tr:first-child a.doc-link", limit=3)
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    page.wait_for_url(DOC_URL)
    doc_id = DOC_URL.search(page.url).group(1)

    # Back to the list and into the viewer again, by keyboard.
    tab_to(page, ".crumbs a")
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    page.wait_for_url("**/documents")
    tab_to(page, f'a[href="/documents/{doc_id}"]')
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/documents/{doc_id}")
    wait_connection(page, "live")
    record(page)

    fail_like_a_dead_worker(stack, conn, doc_id)
    expect(page.locator("#retry")).to_be_visible()
    stops = tab_to(page, "#retry", every_stop_visible=True)
    print(f"#retry is Tab stop {stops} of the viewer")
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    expect(page.locator("#status-heading")).to_be_focused()
    stack.start_worker()
    assert_complete_with_pages(page, 3)
    expect(page.locator("#status-heading")).to_be_focused()  # completion announces, never moves focus
    expect(page.locator("#live-region")).to_have_text("Conversion complete, 3 pages")
    assert_not_reloaded(page)
    console.assert_clean()
