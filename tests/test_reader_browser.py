"""The reader's defects of issue Q, each where it showed: Playwright driving Debian chromium against a
real gunicorn + rq worker, at 1280x900 and at a 360x740 phone.

Zoom beyond the column's width, selection and Ctrl+A, the layout of long search words, of the list
and of a failed document, and find's current match. Screenshots: reader-*.png in SCREENSHOT_DIR.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.live import api
from tests.pdfgen import corrupt_pdf, make_pdf
from tests.support import streams
from tests.support.browser import login, screenshot

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 740}
SIZES = pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["1280", "360"])
TEXT = make_pdf(
    [
        f"Page {i}: the quick brown fox jumps over the lazy dog\nSecond line of page {i} with walrus{i}\n"
        "Third line alpha beta gamma delta"
        for i in range(1, 5)
    ]
)


def wait_complete(stack, token: str, doc_id: str) -> None:
    streams.wait_document(
        api(token),
        stack.base_url,
        doc_id,
        lambda body: body["progress"]["state"] == "complete",
        90,
        what="complete",
    )


@pytest.fixture
def doc(make_stack):
    """A deployment with one converted 4-page document of user 'rita': (stack, token, doc id)."""
    stack = make_stack()
    token = stack.user("rita")
    doc_id = streams.upload(api(token), stack.base_url, TEXT, "reader.pdf")["id"]
    stack.start_worker()
    wait_complete(stack, token, doc_id)
    return stack, token, doc_id


def upload(stack, token: str, data: bytes, name: str, state: str = "complete") -> str:
    """Upload a document and wait until its conversion reaches `state`: its id."""
    doc_id = streams.upload(api(token), stack.base_url, data, name)["id"]
    streams.wait_document(
        api(token), stack.base_url, doc_id, lambda body: body["progress"]["state"] == state, 90, what=state
    )
    return doc_id


def reader(open_context, stack, size: dict) -> Page:
    page = open_context(stack, "rita", requests=True).new_page()
    page.set_viewport_size(size)
    login(page, "rita")
    return page


def open_viewer(page: Page, doc_id: str, fragment: str = "") -> None:
    page.goto(f"/documents/{doc_id}{fragment}")
    page.wait_for_function("() => !!(window.livedoc && window.livedoc.page)")
    page.wait_for_function("() => document.querySelector('#page-1 .text-layer span')")


def rect(page: Page, selector: str) -> dict:
    return page.evaluate(
        "(s) => { const r = document.querySelector(s).getBoundingClientRect();"
        " return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width}; }",
        selector,
    )


def no_sideways_scroll(page: Page) -> None:
    width = page.viewport_size["width"]
    got = page.evaluate("() => [document.documentElement.scrollWidth, window.scrollX]")
    assert got[0] <= width and got[1] == 0, got


# -- 1. zoom beyond the column's width ---------------------------------------------------------------
@SIZES
def test_a_page_zoomed_to_400_percent_is_reachable_edge_to_edge_and_clear_of_the_sidebar(
    doc, open_context, console, size
):
    stack, token, doc_id = doc
    page = reader(open_context, stack, size)
    open_viewer(page, doc_id, "#page=2")
    if size is DESKTOP and not page.locator("#sidebar").is_visible():
        page.click("#sidebar-toggle")
    if size is DESKTOP:
        expect(page.locator("#sidebar")).to_be_visible()
    page.select_option("#zoom", "4")
    page.wait_for_function("() => window.livedoc.page() === 2")
    no_sideways_scroll(page)

    # The pages scroll in their own box: from its left end the page's left edge is in view...
    view = rect(page, "#pages")
    page.evaluate("() => { document.querySelector('#pages').scrollLeft = 0; }")
    # The arrow keys scroll the pages' box (not the window) when no control has the focus.
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#pages').scrollLeft > 0")
    page.evaluate("() => { document.querySelector('#pages').scrollLeft = 0; }")
    box = rect(page, "#page-2 .page-box")
    assert box["width"] > view["right"] - view["left"], box
    assert view["left"] <= box["left"] < view["right"], (box, view)
    # ...and from its right end the right edge: every part of the page can be brought into view.
    page.evaluate("() => { const s = document.querySelector('#pages'); s.scrollLeft = s.scrollWidth; }")
    box = rect(page, "#page-2 .page-box")
    assert view["left"] < box["right"] <= view["right"], (box, view)
    no_sideways_scroll(page)

    if size is DESKTOP:
        # Nothing of the page paints over the open sidebar, whichever way the pages are scrolled.
        side = rect(page, "#sidebar")
        for left in (0, 10**6):
            page.evaluate(f"() => {{ document.querySelector('#pages').scrollLeft = {left}; }}")
            hit = page.evaluate(
                "([x, y]) => !!document.elementFromPoint(x, y).closest('#sidebar')",
                [side["right"] - 20, (side["top"] + side["bottom"]) / 2],
            )
            assert hit, f"the page covers the sidebar at scrollLeft={left}"
    screenshot(page, f"reader-zoom-400-{size['width']}.png")
    console.assert_clean()


# -- 3. selection and copy ---------------------------------------------------------------------------
SELECTED = """() => { const sel = getSelection(); const text = sel.toString();
  const painted = Array.from(document.querySelectorAll('img, .tool, #sidebar, .viewer-head, figcaption'))
    .filter((e) => sel.containsNode(e, true) && getComputedStyle(e).userSelect !== 'none')
    .map((e) => e.tagName + '#' + e.id + '.' + e.className);
  return {text, painted}; }"""


def test_a_drag_from_the_margin_selects_the_line_and_ctrl_a_selects_only_the_page_text(
    doc, open_context, console
):
    stack, token, doc_id = doc
    page = reader(open_context, stack, DESKTOP)
    open_viewer(page, doc_id)
    box = rect(page, "#page-1 .page-box")
    first = rect(page, "#page-1 .text-layer span")
    y = (first["top"] + first["bottom"]) / 2
    assert box["left"] + 20 < first["left"]  # a margin left of the line
    page.mouse.move(box["left"] + 10, y)
    page.mouse.down()
    page.mouse.move(first["left"] + first["width"] * 0.6, y, steps=6)
    page.mouse.up()
    got = page.evaluate(SELECTED)
    assert got["text"].startswith("Page 1: the quick"), got

    # Ctrl+A in the document: the text of the pages, none of the reader's buttons, captions or images.
    page.mouse.click(box["left"] + 10, box["top"] + 10)
    page.keyboard.press("Control+A")
    got = page.evaluate(SELECTED)
    assert "Page 1: the quick brown fox" in got["text"], got
    assert "Second line of page 2 with walrus2" in got["text"], got
    for chrome in ("My documents", "Sidebar", "Conversion", "Download", "Automatic"):
        assert chrome not in got["text"], (chrome, got["text"])
    assert got["painted"] == [], got["painted"]
    screenshot(page, "reader-select-all.png")
    # In a form field Ctrl+A is the field's own.
    page.fill("#find", "walrus")
    page.focus("#find")
    page.keyboard.press("Control+A")
    assert page.evaluate(
        "() => [document.activeElement.selectionStart, document.activeElement.selectionEnd]"
    ) == [0, 6]
    console.assert_clean()


# -- 4. layout at a desktop and a phone --------------------------------------------------------------
LONG_WORD = "configuration_of_the_conversion_workers_and_their_queues_in_detail"
LONG = make_pdf([f"See https://example.org/{LONG_WORD}/reference for {LONG_WORD} and more\nSecond line"])
NAME = "Quarterly report for the board of directors 2026.pdf"
# Which words of an element's text are drawn on more than one line (broken inside the word).
BROKEN_WORDS = """(sel) => { const el = document.querySelector(sel); const node = el.firstChild;
  const broken = []; let at = 0;
  for (const word of node.textContent.split(' ')) {
    const r = document.createRange(); r.setStart(node, at); r.setEnd(node, at + word.length);
    const tops = new Set(Array.from(r.getClientRects()).map((c) => Math.round(c.top)));
    if (tops.size > 1) broken.push(word);
    at += word.length + 1;
  }
  return broken; }"""


@SIZES
def test_long_search_words_neither_widen_the_sidebar_nor_scroll_the_window(doc, open_context, console, size):
    stack, token, _ = doc
    doc_id = upload(stack, token, LONG, "long.pdf")
    page = reader(open_context, stack, size)
    open_viewer(page, doc_id)
    if not page.locator("#sidebar").is_visible():
        page.click("#sidebar-toggle")
    before = rect(page, "#sidebar")
    page.fill("#find", LONG_WORD)
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text("Match 1 of 2 in 1 page")
    if not page.locator("#sidebar").is_visible():
        page.click("#sidebar-toggle")
    page.click("#tab-results")
    expect(page.locator("#find-results .result")).to_have_count(2)
    after = rect(page, "#sidebar")
    assert after["width"] == before["width"], (before, after)
    if size is DESKTOP:
        assert after["width"] == 240
    assert after["right"] <= size["width"]
    for i in range(2):
        assert rect(page, f"#find-results li:nth-child({i + 1}) .result")["right"] <= after["right"]
    no_sideways_scroll(page)
    screenshot(page, f"reader-long-words-{size['width']}.png")
    console.assert_clean()


def test_my_documents_fits_a_phone_and_file_names_break_between_words(doc, open_context, console):
    stack, token, _ = doc
    doc_id = upload(stack, token, TEXT, NAME)
    page = reader(open_context, stack, PHONE)
    page.goto("/documents")
    row = f"tr[data-doc-id='{doc_id}']"
    expect(page.locator(f"{row} .doc-state")).to_have_text("complete")
    no_sideways_scroll(page)
    for part in (".doc-link", ".doc-state", ".doc-percent", ".doc-actions button"):
        b = page.locator(f"{row} {part}").bounding_box()
        assert b and b["x"] >= 0 and b["x"] + b["width"] <= 360, (part, b)
        assert page.locator(f"{row} {part}").is_visible()
    assert page.evaluate(BROKEN_WORDS, f"{row} .doc-link") == []
    screenshot(page, "reader-list-phone.png")
    page.set_viewport_size(DESKTOP)
    screenshot(page, "reader-list-desktop.png")
    page.set_viewport_size(PHONE)
    open_viewer(page, doc_id)
    assert page.evaluate(BROKEN_WORDS, ".viewer-title h1") == []
    console.assert_clean()


@SIZES
def test_a_failed_document_shows_its_error_and_no_empty_reader_or_notice(doc, open_context, console, size):
    stack, token, _ = doc
    doc_id = upload(stack, token, corrupt_pdf(), "broken.pdf", state="failed")
    page = reader(open_context, stack, size)
    page.goto(f"/documents/{doc_id}")
    page.wait_for_function("() => !!(window.livedoc && window.livedoc.page)")
    expect(page.locator("#error")).to_be_visible()
    for part in ("#toolbar", "#viewer-body", "#zoom", "#find", "#page-number"):
        expect(page.locator(part)).to_be_hidden()
    no_sideways_scroll(page)
    # A notice shown with nothing in it takes no room (no empty orange sliver).
    height = page.evaluate("""() => { const n = document.querySelector('#queue-notice');
        n.hidden = false; n.textContent = ''; return n.getBoundingClientRect().height; }""")
    assert height == 0
    screenshot(page, f"reader-failed-{size['width']}.png")
    console.assert_clean()


# -- 5. find ------------------------------------------------------------------------------------------
HIT_STYLES = """() => Array.from(document.querySelectorAll('#page-1 .hit')).map((h) => {
  const cs = getComputedStyle(h);
  return [cs.backgroundColor, cs.outlineStyle, cs.outlineColor].join(' '); })"""


@SIZES
def test_find_marks_the_current_match_apart_and_an_emptied_box_clears_the_result(
    doc, open_context, console, size
):
    stack, token, doc_id = doc
    page = reader(open_context, stack, size)
    open_viewer(page, doc_id)
    page.fill("#find", "line")
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text("Match 1 of 8 in 4 pages")
    page.wait_for_function("() => document.querySelectorAll('#page-1 .hit').length === 2")
    first = page.evaluate(HIT_STYLES)
    assert first[0] != first[1], first  # the current match looks unlike the other
    page.press("#find", "Enter")
    expect(page.locator("#find-status")).to_have_text("Match 2 of 8 in 4 pages")
    second = page.evaluate(HIT_STYLES)
    assert second == [first[1], first[0]], (first, second)  # the mark moved to the second match
    screenshot(page, f"reader-find-{size['width']}.png")

    # Emptying the box (by deleting its text, not only with its clear button) clears the result.
    page.fill("#find", "")
    expect(page.locator("#find-status")).to_have_text("")
    expect(page.locator("#find-results .result")).to_have_count(0)
    expect(page.locator("#pages .hit")).to_have_count(0)
    expect(page.locator("#find-next")).to_be_disabled()
    console.assert_clean()
