"""A word hyphenated at a line's end is one word again (issue Q): in the stored page text that search
reads, and in the text layer a reader selects and copies, through a real conversion.

pdfium gives such a hyphen (a hard "-" or a soft hyphen, U+00AD, ending the line) as U+FFFE in the
page's text and U+0002 per character; pdftotext and PDF.js's find join the word's halves.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import streams
from tests.support.browser import login

LINES = (
    "Readers are encour-\n"
    "aged to keep notes up-to-\n"
    "date. Writers are encour\u00ad\n"
    "aged too: we encouraged them.\n"
)
PDF = make_pdf([LINES])
MARKS = ("\ufffe", "\x02")


@pytest.fixture
def converted(make_stack):
    """(stack, session, doc id) of the converted one-page document of user 'hugo'."""
    stack = make_stack()
    session = api(stack.user("hugo"))
    doc_id = streams.upload(session, stack.base_url, PDF, "hyphens.pdf")["id"]
    stack.start_worker()
    streams.wait_document(
        session,
        stack.base_url,
        doc_id,
        lambda body: body["progress"]["state"] == "complete",
        90,
        what="complete",
    )
    return stack, session, doc_id


def hits(stack, session, doc_id: str, query: str) -> list[dict]:
    resp = session.get(f"{stack.base_url}/api/documents/{doc_id}/search", params={"q": query}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["hits"]


def test_search_finds_words_hyphenated_at_a_line_end_and_shows_no_marker(converted):
    stack, session, doc_id = converted
    found = hits(stack, session, doc_id, "encouraged")
    assert len(found) == 3, found  # two split at a line end (hard and soft hyphen), one whole
    assert len(hits(stack, session, doc_id, "up-to-date")) == 1  # a compound keeps its own hyphen
    assert hits(stack, session, doc_id, "encour-") == []
    for hit in found:
        assert not any(m in hit["snippet"] for m in MARKS), hit["snippet"]


@pytest.mark.browser
def test_the_text_layer_joins_the_halves_of_a_hyphenated_word(converted, open_context, console):
    stack, session, doc_id = converted
    body = session.get(f"{stack.base_url}/api/documents/{doc_id}", timeout=10).json()
    layer = session.get(f"{stack.base_url}{body['files_url']}layer-0001.json", timeout=10).json()
    texts = [run[4] for run in layer["runs"]]
    assert not any(m in t for t in texts for m in MARKS), texts

    page = open_context(stack, "hugo", requests=True).new_page()
    login(page, "hugo")
    page.goto(f"/documents/{doc_id}")
    text_layer = page.locator("#page-1 .text-layer")
    expect(text_layer).to_contain_text("Readers are encouraged to keep notes up-to-date.")
    # What a reader copies: selected across the line ends, the words come whole.
    copied = page.evaluate("""() => { const layer = document.querySelector('#page-1 .text-layer');
        getSelection().selectAllChildren(layer); return getSelection().toString(); }""")
    assert "encouraged to keep notes up-to-date. Writers are encouraged too" in copied.replace(
        "\u00ad", ""
    ), copied
    assert not any(m in copied for m in MARKS), copied
    console.assert_clean()
