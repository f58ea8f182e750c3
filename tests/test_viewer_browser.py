"""The viewer as a reader uses it: Playwright driving Debian chromium against real gunicorn + rq worker.

Reading while converting (pages appear before complete, their text is selectable), the page box and
keys, `#page=N`, the last page read, zoom, the text layer, find, the outline, thumbnails, delete, all
by keyboard, and a 360 px phone. Screenshots: viewer-reading.png, viewer-find.png, viewer-phone.png,
viewer-phone-sidebar.png, in SCREENSHOT_DIR (tests/support/browser.py).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import streams, wait_for
from tests.support.browser import login, screenshot

pytestmark = pytest.mark.browser

PAGES = 60
OUTLINE = [
    ("Introduction", 0, []),
    ("Part one", 2, [("Chapter 1", 3, []), ("Chapter 2", 9, [("Section 2.1", 10, [])])]),
    ("Part two", 30, [("Chapter 3", 31, [])]),
    ("Index", 59, []),
]
BOOK = make_pdf(
    [
        f"Page {i} of the viewer test document\nLine two of page {i} holds zebra{i:02d}\n"
        "A third line: alpha beta gamma"
        for i in range(1, PAGES + 1)
    ],
    outline=OUTLINE,
)
LONG_BOOK = make_pdf([f"Page {i}, zebra{i:03d}" for i in range(1, 301)])
SLOW = {"RENDER_DPI": "250"}  # a few seconds of conversion: pages visibly stream in
# At RENDER_DPI=110 a US Letter page image is 935 x 1210 px; 100% zoom is its paper size, 816 px wide.
WIDTH_100 = round(935 * 96 / 110)

KEYS_FOCUS = """() => {
  const el = document.activeElement; const cs = getComputedStyle(el);
  return {id: el.id, tag: el.tagName, text: (el.textContent || '').trim().slice(0, 30),
          visible: cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0};
}"""


# -- helpers ---------------------------------------------------------------------------------------
def upload(stack, token: str, data: bytes = BOOK, name: str = "book.pdf") -> str:
    return streams.upload(api(token), stack.base_url, data, name)["id"]


def doc_json(stack, token: str, doc_id: str) -> tuple[int, dict]:
    resp = api(token).get(f"{stack.base_url}/api/documents/{doc_id}", timeout=5)
    return resp.status_code, resp.json()


def wait_complete(stack, token: str, doc_id: str, timeout: float = 90) -> dict:
    return streams.wait_document(
        api(token),
        stack.base_url,
        doc_id,
        lambda body: body["progress"]["state"] == "complete",
        timeout,
        what="complete",
    )


@pytest.fixture
def book(make_stack):
    """A deployment with one converted 60-page book of user 'rita': (stack, token, doc id)."""
    stack = make_stack()
    token = stack.user("rita")
    doc_id = upload(stack, token)
    stack.start_worker()
    wait_complete(stack, token, doc_id)
    return stack, token, doc_id


@pytest.fixture
def reader(book, open_context):
    """Rita logged in (any failed request fails the test), and her book: (page, stack, token, doc id)."""
    stack, token, doc_id = book
    page = open_context(stack, "rita", requests=True).new_page()
    login(page, "rita")
    return page, stack, token, doc_id


def open_viewer(page: Page, doc_id: str, fragment: str = "") -> None:
    page.goto(f"/documents/{doc_id}{fragment}")
    page.wait_for_function("() => !!(window.livedoc && window.livedoc.page)")


def current(page: Page) -> int:
    return page.evaluate("() => window.livedoc.page()")


def page_top_at_toolbar(page: Page, n: int) -> float:
    """How far page n's top is below the toolbar's bottom, in CSS px (0 = just under it)."""
    return page.evaluate(
        """(n) => document.querySelector('#page-' + n).getBoundingClientRect().top
                              - document.querySelector('#toolbar').getBoundingClientRect().bottom""",
        n,
    )


def box_width(page: Page, n: int) -> float:
    return page.locator(f"#page-{n} .page-box").bounding_box()["width"]


def assert_at_page(page: Page, n: int) -> None:
    expect(page.locator("#page-number")).to_have_value(str(n))
    page.wait_for_function("(n) => location.hash === '#page=' + n", arg=n)
    assert current(page) == n


def blur(page: Page) -> None:
    page.evaluate("() => document.activeElement && document.activeElement.blur()")


# -- 1. reading while it converts --------------------------------------------------------------------
def test_pages_are_readable_and_searchable_before_the_conversion_completes(make_stack, open_context, console):
    stack = make_stack(**SLOW)
    token = stack.user("ann")
    doc_id = upload(stack, token)
    page = open_context(stack, "ann", requests=True, reduced_motion="reduce").new_page()
    login(page, "ann")
    open_viewer(page, doc_id)
    expect(page.locator("#viewer")).to_have_attribute("data-state", "queued")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    stack.start_worker()

    # Page 1 is on screen, with its words in the text layer, while the rest still converts.
    page.wait_for_function(
        """() => { const img = document.querySelector('#page-1 img');
                                     return img && img.complete && img.naturalWidth > 0; }""",
        timeout=60_000,
    )
    expect(page.locator("#page-1 .text-layer")).to_contain_text("Page 1 of the viewer test document")
    seen = page.evaluate("""() => ({state: document.querySelector('#viewer').dataset.state,
        ready: window.livedoc.state().ready,
        figures: document.querySelectorAll('#page-column figure.page').length,
        pending: document.querySelectorAll('#page-column figure.pending').length,
        ratio: (() => { const r = document.querySelector('#page-60 .page-box').getBoundingClientRect();
                        return r.height / r.width; })(),
        label: document.querySelector('#page-60 .placeholder')?.getAttribute('aria-label')})""")
    print("when page 1 showed:", seen)
    assert seen["state"] == "running", seen
    assert seen["figures"] == PAGES and seen["pending"] >= 1
    assert abs(seen["ratio"] - 2750 / 2125) < 0.01, seen  # the placeholder has the page's real shape
    assert seen["label"] == "Page 60, not converted yet"
    expect(page.locator("#ready-count")).to_have_text(re.compile(rf"^\d+ of {PAGES} pages ready to read$"))

    # Search the ready part: the status says how much was searched.
    page.fill("#find", "alpha beta")
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text(
        re.compile(rf"^Match 1 of \d+ · searched (\d+) of {PAGES} pages \(still converting\)$")
    )
    status = page.locator("#find-status").text_content()
    hits, searched = map(int, re.search(r"of (\d+) · searched (\d+)", status).groups())
    assert hits == searched < PAGES, status
    screenshot(page, "viewer-reading.png")

    expect(page.locator("#viewer")).to_have_attribute("data-state", "complete", timeout=90_000)
    expect(page.locator("#page-column figure.pending")).to_have_count(0)
    expect(page.locator("#ready-count")).to_have_text("")
    # A 60-page book holds images and text layers only near the viewport.
    loaded = page.evaluate("() => document.querySelectorAll('#page-column img').length")
    layers = page.evaluate("() => document.querySelectorAll('#page-column .text-layer').length")
    assert 1 <= loaded <= 12 and layers <= 12, (loaded, layers)
    blur(page)
    page.keyboard.press("End")
    assert_at_page(page, PAGES)
    expect(page.locator("#page-60 .text-layer")).to_contain_text("Line two of page 60 holds zebra60")
    assert page.evaluate("() => document.querySelectorAll('#page-column img').length") <= 12
    assert page.locator("#page-1 img").count() == 0  # far away again: released
    console.assert_clean()


# -- 2. page box, keys, #page=N, last page read ------------------------------------------------------
def test_page_box_keys_fragment_and_last_page_read(reader, console):
    page, stack, token, doc_id = reader
    open_viewer(page, doc_id, "#page=7")
    expect(page.locator("#page-of")).to_have_text(f"of {PAGES}")
    expect(page.locator("label[for=page-number]")).to_have_text("Page number")
    download = page.locator("#download")
    expect(download).to_have_attribute("href", f"/documents/{doc_id}/download")
    got = page.request.get(download.get_attribute("href"))
    assert got.status == 200 and got.body() == BOOK
    assert (
        got.headers["content-disposition"].startswith("attachment;")
        and "book.pdf" in got.headers["content-disposition"]
    )
    assert_at_page(page, 7)
    assert abs(page_top_at_toolbar(page, 7) - 8) < 3  # just under the toolbar

    page.fill("#page-number", "12")
    page.press("#page-number", "Enter")
    assert_at_page(page, 12)
    expect(page.locator("#page-live")).to_have_text(f"Page 12 of {PAGES}")
    page.fill("#page-number", "999")
    page.press("#page-number", "Enter")
    expect(page.locator("#page-number")).to_have_value("12")
    expect(page.locator("#page-live")).to_have_text(f"Enter a page number from 1 to {PAGES}")

    blur(page)
    # A page taller than the view: PgDn first shows the rest of it, then goes to the next page.
    page.keyboard.press("PageDown")
    box = page.locator("#page-12 .page-box").bounding_box()
    bottom = box["y"] + box["height"]
    assert current(page) == 12 and bottom <= page.viewport_size["height"], bottom
    page.keyboard.press("PageDown")
    assert_at_page(page, 13)
    assert abs(page_top_at_toolbar(page, 13) - 8) < 3
    page.keyboard.press("PageUp")
    assert_at_page(page, 12)
    page.keyboard.press("End")
    assert_at_page(page, PAGES)
    page.keyboard.press("Home")
    assert_at_page(page, 1)
    page.click("#next-page")
    assert_at_page(page, 2)

    # Scrolling moves the page box and the fragment; the page is saved as the last one read.
    with page.expect_request(lambda r: r.method == "PUT" and r.post_data_json == {"page": 30}) as put:
        # The pages scroll in their own box (#pages), not the window.
        page.evaluate(
            "() => { const box = document.querySelector('#pages');"
            " box.scrollBy(0, document.querySelector('#page-30').getBoundingClientRect().top"
            " - box.getBoundingClientRect().top - 9); }"
        )
        assert_at_page(page, 30)
    assert put.value.url.endswith(f"/api/documents/{doc_id}/position")
    wait_for(lambda: doc_json(stack, token, doc_id)[1]["last_page"] == 30, 5, what="last page saved")

    # Back later, without a fragment: the viewer opens where the reader stopped.
    page.goto("/documents")
    open_viewer(page, doc_id)
    assert_at_page(page, 30)
    # A fragment wins over the saved page.
    open_viewer(page, doc_id, "#page=4")
    assert_at_page(page, 4)
    console.assert_clean()


# -- 3. zoom -----------------------------------------------------------------------------------------
def test_zoom_steps_fits_and_keys_keep_the_reading_place(reader, console):
    page, stack, token, doc_id = reader
    open_viewer(page, doc_id, "#page=10")
    assert_at_page(page, 10)
    assert box_width(page, 10) == WIDTH_100  # Automatic: fit the width, at most 100 %
    expect(page.locator("#zoom")).to_have_value("auto")

    page.select_option("#zoom", "2")
    assert box_width(page, 10) == 2 * WIDTH_100
    assert current(page) == 10 and abs(page_top_at_toolbar(page, 10) - 8) < 3  # still reading page 10
    blur(page)
    page.keyboard.press("Control+-")
    assert box_width(page, 10) == round(1.5 * 935 * 96 / 110)
    expect(page.locator("#zoom")).to_have_value("1.5")
    page.keyboard.press("Control+=")
    expect(page.locator("#zoom")).to_have_value("2")
    for _ in range(3):
        page.keyboard.press("Control+=")
    expect(page.locator("#zoom")).to_have_value("4")  # the top step, and no further
    assert box_width(page, 10) == 4 * WIDTH_100
    page.click("#zoom-out")
    expect(page.locator("#zoom")).to_have_value("3")
    for _ in range(8):
        page.click("#zoom-out")
    expect(page.locator("#zoom")).to_have_value("0.5")
    assert box_width(page, 10) == round(0.5 * 935 * 96 / 110)
    assert current(page) == 10
    page.keyboard.press("Control+0")
    expect(page.locator("#zoom")).to_have_value("auto")

    page.select_option("#zoom", "page-width")
    avail = page.evaluate("() => document.querySelector('#page-column').clientWidth - 32")
    assert abs(box_width(page, 10) - avail) <= 1
    page.select_option("#zoom", "page-fit")
    fits = page.evaluate("""() => {
        const r = document.querySelector('#page-10 .page-box').getBoundingClientRect();
        return r.height <= innerHeight - document.querySelector('#toolbar').offsetHeight; }""")
    assert fits
    # The text layer follows the zoom: page 10's words stay over the picture's words.
    page.select_option("#zoom", "2")
    span = page.locator("#page-10 .text-layer span", has_text="zebra10")
    sb = span.bounding_box()
    pb = page.locator("#page-10 .page-box").bounding_box()
    # pdfgen draws the text at 72 pt from the left edge: one inch, 192 px at 200 %.
    assert abs((sb["x"] - pb["x"]) - 192) < 4, (sb, pb)
    console.assert_clean()


# -- 4. text layer and find -----------------------------------------------------------------------
def test_text_layer_is_selectable_and_find_highlights_hits(reader, console):
    page, stack, token, doc_id = reader
    open_viewer(page, doc_id, "#page=5")
    layer = page.locator("#page-5 .text-layer")
    expect(layer).to_contain_text("Page 5 of the viewer test document")
    expect(layer).to_contain_text("Line two of page 5 holds zebra05")
    selected = page.evaluate("""() => { const r = document.createRange();
        r.selectNodeContents(document.querySelector('#page-5 .text-layer'));
        const s = getSelection(); s.removeAllRanges(); s.addRange(r); return s.toString(); }""")
    assert "Page 5 of the viewer test document" in selected and "zebra05" in selected
    assert "\n" in selected  # the lines stay lines when copied
    page.evaluate("() => getSelection().removeAllRanges()")

    page.fill("#find", "zebra17")
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text(f"Match 1 of 1 in {PAGES} pages")
    expect(page.locator("#find-results li")).to_have_count(1)
    expect(page.locator("#find-results li button")).to_contain_text("Page 17")
    expect(page.locator("#find-results mark")).to_have_text("zebra17")
    assert_at_page(page, 17)
    hit = page.locator("#page-17 .hit-layer.current .hit")
    expect(hit).to_have_count(1)
    word = page.locator("#page-17 .text-layer span", has_text="zebra17").bounding_box()
    hb = hit.bounding_box()
    # The highlight sits on the word, inside the line's run.
    assert word["x"] < hb["x"] < word["x"] + word["width"] and hb["width"] < word["width"] / 3, (word, hb)
    assert abs(hb["y"] - word["y"]) < 3 and abs(hb["height"] - word["height"]) < 3
    screenshot(page, "viewer-find.png")

    page.fill("#find", "alpha beta")
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text(f"Match 17 of {PAGES} in {PAGES} pages")  # from here on
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text(f"Match 18 of {PAGES} in {PAGES} pages")
    assert_at_page(page, 18)
    page.press("#find", "Shift+Enter")
    page.press("#find", "Shift+Enter")
    expect(page.locator("#find-status")).to_have_text(f"Match 16 of {PAGES} in {PAGES} pages")
    assert_at_page(page, 16)
    page.locator("#find-results button", has_text="Page 3").first.click()
    assert_at_page(page, 3)
    expect(page.locator("#page-3 .hit-layer.current")).to_have_count(1)
    expect(page.locator("#find-results button[aria-current=true]")).to_contain_text("Page 3")

    page.fill("#find", "no such words anywhere")
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text(f"No matches in {PAGES} pages")
    expect(page.locator(".hit")).to_have_count(0)
    console.assert_clean()


# -- 5. outline and thumbnails -------------------------------------------------------------------------
def test_outline_tree_and_thumbnails_jump_to_pages(reader, console):
    page, stack, token, doc_id = reader
    open_viewer(page, doc_id)
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "true")  # wide screen: open
    page.click("#tab-outline")
    expect(page.locator("#tab-outline")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-outline")).to_be_visible()
    top = page.locator("#outline .outline-tree > li > .outline-row .outline-link")
    expect(top).to_have_text(["Introduction", "Part one", "Part two", "Index"])
    expect(page.locator("#outline a", has_text="Chapter 2")).to_be_hidden()  # collapsed
    part_one = page.locator("#outline button[aria-controls]").first
    expect(part_one).to_have_attribute("aria-expanded", "false")
    part_one.click()
    expect(part_one).to_have_attribute("aria-expanded", "true")
    page.click("#outline a:text-is('Chapter 2')")
    assert_at_page(page, 10)
    page.click("#outline a:text-is('Part two')")
    assert_at_page(page, 31)
    page.click("#outline a:text-is('Index')")
    assert_at_page(page, PAGES)

    page.click("#tab-thumbs")
    expect(page.locator("#thumbs a")).to_have_count(PAGES)
    expect(page.locator("#thumbs a[aria-current=page]")).to_have_attribute("href", f"#page={PAGES}")
    # Thumbnails load only where the panel shows them.
    page.wait_for_function("() => document.querySelector('#thumbs a[href=\"#page=60\"] img')?.naturalWidth")
    assert page.evaluate("() => document.querySelectorAll('#thumbs img').length") < 20
    page.locator("#thumbs a[href='#page=58']").click()
    assert_at_page(page, 58)
    page.click("#sidebar-toggle")
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    console.assert_clean()


# -- 6. delete -------------------------------------------------------------------------------------
def test_delete_from_the_viewer_and_the_list_with_confirmation(make_stack, open_context, console):
    stack = make_stack(**SLOW)
    token = stack.user("del")
    first = upload(stack, token, LONG_BOOK, name="first.pdf")  # still converting when it is deleted
    second = upload(stack, token, name="second.pdf")
    ctx = open_context(stack, "del")
    page = ctx.new_page()
    login(page, "del")
    open_viewer(page, first)
    other = ctx.new_page()  # a second tab reading the same document
    open_viewer(other, first)
    expect(other.locator("#connection")).to_have_attribute("data-state", "live")
    stack.start_worker()
    other.wait_for_function("() => window.livedoc.state().ready >= 1", timeout=60_000)
    # Files of a deleted document answer 404: the tab that still reads it may ask for one.
    console.allow(r"Failed to load resource: the server responded with a status of 404")

    page.click("#delete")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text("Delete first.pdf?")
    expect(page.locator("#confirm-dialog button[value=cancel]")).to_be_focused()  # the safe answer first
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert doc_json(stack, token, first)[0] == 200
    page.click("#delete")
    page.click("#confirm-ok")
    page.wait_for_url("**/documents")
    assert doc_json(stack, token, first)[0] == 404
    expect(page.locator(f'tr[data-doc-id="{first}"]')).to_have_count(0)

    # The other tab was told through its open stream.
    expect(other.locator("#deleted")).to_be_visible()
    expect(other.locator("#deleted")).to_contain_text("This document was deleted.")
    expect(other.locator("#deleted")).to_have_attribute("role", "alert")
    expect(other.locator("#toolbar")).to_be_hidden()
    expect(other.locator("#pages")).to_be_hidden()

    row = page.locator(f'tr[data-doc-id="{second}"]')
    row.locator("button", has_text="Delete").click()
    expect(page.locator("#confirm-title")).to_have_text("Delete second.pdf?")
    page.click("#confirm-ok")
    expect(row).to_have_count(0)
    expect(page.locator("#list-live")).to_contain_text("second.pdf deleted.")
    expect(page.locator("#no-docs")).to_be_visible()
    assert doc_json(stack, token, second)[0] == 404
    console.assert_clean()


# -- 7. keyboard only -------------------------------------------------------------------------------
def tab_to(page: Page, selector: str, limit: int = 60, shift: bool = False) -> None:
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if shift else "Tab")
        f = page.evaluate(KEYS_FOCUS)
        assert f["visible"], f"focus not visible on {f}"
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} not reachable with Tab")


def test_every_viewer_control_works_by_keyboard_alone(reader, console):
    page, stack, token, doc_id = reader
    open_viewer(page, doc_id)

    tab_to(page, "#page-number")
    page.keyboard.type("21")
    page.keyboard.press("Enter")
    assert_at_page(page, 21)
    tab_to(page, "#zoom")
    page.keyboard.press("ArrowDown")  # Automatic → Fit width
    expect(page.locator("#zoom")).to_have_value("page-width")
    tab_to(page, "#find")
    page.keyboard.type("zebra33")
    page.keyboard.press("Enter")
    assert_at_page(page, 33)
    expect(page.locator("#page-33 .hit-layer.current .hit")).to_have_count(1)

    # The sidebar's tabs are one stop (the matches are showing now); Home and arrows move between them.
    tab_to(page, "[role=tab][aria-selected=true]")
    expect(page.locator("#tab-results")).to_be_focused()
    page.keyboard.press("Home")
    expect(page.locator("#tab-thumbs")).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-outline")).to_be_focused()
    expect(page.locator("#panel-outline")).to_be_visible()
    tab_to(page, "#outline button[aria-controls]")
    page.keyboard.press("Enter")
    tab_to(page, '#outline a[href="#page=4"]')  # Chapter 1
    page.keyboard.press("Enter")
    assert_at_page(page, 4)

    tab_to(page, "#delete", shift=True)
    page.keyboard.press("Enter")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator("#confirm-ok")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url("**/documents")
    assert doc_json(stack, token, doc_id)[0] == 404
    console.assert_clean()


# -- 8. a phone --------------------------------------------------------------------------------------
def test_phone_width_sidebar_over_the_pages_and_a_wrapping_toolbar(reader, console):
    page, stack, token, doc_id = reader
    page.set_viewport_size({"width": 360, "height": 740})
    open_viewer(page, doc_id)
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    expect(page.locator("#sidebar")).to_be_hidden()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360  # nothing sticks out
    assert box_width(page, 1) == 360 - 16  # Automatic fits the phone's width
    for sel in ("#page-number", "#zoom", "#find", "#sidebar-toggle"):
        b = page.locator(sel).bounding_box()
        assert b["x"] >= 0 and b["x"] + b["width"] <= 360, (sel, b)
    screenshot(page, "viewer-phone.png")

    page.click("#sidebar-toggle")
    expect(page.locator("#sidebar")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#thumbs a[href=\"#page=2\"] img')?.naturalWidth")
    screenshot(page, "viewer-phone-sidebar.png")
    page.locator("#thumbs a[href='#page=3']").click()
    expect(page.locator("#sidebar")).to_be_hidden()  # out of the way after a choice
    assert_at_page(page, 3)
    expect(page.locator("#page-3")).to_be_focused()
    page.click("#sidebar-toggle")
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#sidebar-toggle")).to_be_focused()
    console.assert_clean()
