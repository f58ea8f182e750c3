"""PDF uploads via pypdfium2: check the whole document first, then render and store page by page."""
from __future__ import annotations

import os
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from config import Settings
from workers.errors import (
    CorruptDocument,
    EmptyDocument,
    EncryptedDocument,
    PageTooLarge,
    StorageError,
    TooManyPages,
)
from workers.images import MAX_SIDE
from workers.pages import PageSink, Run

POINTS_PER_INCH = 72
OUTLINE_MAX_ITEMS = 5000
OUTLINE_MAX_DEPTH = 12
RUNS_MAX = 20_000  # text runs kept per page: a hostile page of a million tiny glyphs stays bounded


def open_document(path: Path) -> pdfium.PdfDocument:
    """Open a PDF, turning pdfium's load errors into ConversionErrors."""
    # Loaded through the raw API because pypdfium2 reports a valid zero-page file as a load failure
    # and then reads FPDF_GetLastError, which still holds the previous document's error. Here the
    # error code is read only when the load itself failed, so it belongs to this file.
    raw = pdfium_c.FPDF_LoadDocument(os.fsencode(path) + b"\x00", None)
    if not raw:
        code = pdfium_c.FPDF_GetLastError()
        if code == pdfium_c.FPDF_ERR_PASSWORD:
            raise EncryptedDocument()
        if code == pdfium_c.FPDF_ERR_SECURITY:
            raise EncryptedDocument("This PDF is protected with a kind of encryption that cannot be opened. "
                                    "Upload a copy without protection.")
        if code == pdfium_c.FPDF_ERR_FILE:
            raise StorageError()
        raise CorruptDocument("This PDF is damaged and cannot be read.")
    return pdfium.PdfDocument(raw)


def check_document(doc: pdfium.PdfDocument, settings: Settings) -> list[tuple[int, int]]:
    """Refuse empty, too long or too large documents before any page is rendered; returns the
    rendered size in pixels of every page."""
    pages = len(doc)
    if pages == 0:
        raise EmptyDocument()
    if pages > settings.MAX_PAGES:
        raise TooManyPages(f"The document has {pages} pages; the limit is {settings.MAX_PAGES}.")
    scale = settings.RENDER_DPI / POINTS_PER_INCH
    sizes = []
    for index in range(pages):
        # The size comes from the page dictionary without loading the page, so checking every page
        # up front is cheap and a user waits seconds, not minutes, to learn that page 400 is too big.
        try:
            width, height = doc.get_page_size(index)
        except pdfium.PdfiumError:
            raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
        if (width * scale * height * scale > settings.MAX_PAGE_PIXELS
                or max(width, height) * scale > MAX_SIDE):
            raise PageTooLarge(f"Page {index + 1} is too large to display at {settings.RENDER_DPI} dpi.")
        sizes.append((max(1, round(width * scale)), max(1, round(height * scale))))
    return sizes


def outline(doc: pdfium.PdfDocument) -> list[dict]:
    """The PDF's bookmarks as a tree of {title, page, children} (page: 1-based, or None)."""
    root: list[dict] = []
    stack: list[tuple[int, list[dict]]] = [(-1, root)]
    count = 0
    try:
        for item in doc.get_toc(max_depth=OUTLINE_MAX_DEPTH):
            count += 1
            if count > OUTLINE_MAX_ITEMS:
                break
            dest = item.get_dest()
            index = dest.get_index() if dest is not None else None
            node = {"title": (item.get_title() or "").strip()[:300] or "Untitled",
                    "page": index + 1 if index is not None else None, "children": []}
            while stack[-1][0] >= item.level:
                stack.pop()
            stack[-1][1].append(node)
            stack.append((item.level, node["children"]))
    except pdfium.PdfiumError:
        return root  # a damaged outline is no reason to refuse a readable document
    return root


def convert(source: Path, settings: Settings, sink: PageSink) -> None:
    """Render every page of a PDF to JPEG plus thumbnail, text and text layer, in page order."""
    doc = open_document(source)
    try:
        sizes = check_document(doc, settings)
        sink.begin(sizes, outline(doc))
        # Without this, filled-in form fields would render empty.
        doc.init_forms()
        scale = settings.RENDER_DPI / POINTS_PER_INCH
        for index in range(len(sizes)):
            render_page(doc, index, scale, sink)
    finally:
        # pdfium holds native memory that Python's GC does not see; close deterministically.
        doc.close()


def render_page(doc: pdfium.PdfDocument, index: int, scale: float, sink: PageSink) -> None:
    """Render one page and hand it to the sink; its native memory is released before returning."""
    try:
        page = doc[index]
    except pdfium.PdfiumError:
        raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
    try:
        try:
            text, runs = page_text(page)
            bitmap = page.render(scale=scale, rev_byteorder=True)
        except pdfium.PdfiumError:
            raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
        try:
            # The PIL image may share the bitmap's buffer, so it is written before the bitmap closes.
            image = bitmap.to_pil()
            sink.add(index + 1, image, text, runs)
            image.close()
        finally:
            bitmap.close()
    finally:
        page.close()


def page_text(page: pdfium.PdfPage) -> tuple[str, list[Run]]:
    """The page's text, and its text runs at their positions (fractions of the rendered page)."""
    textpage = page.get_textpage()
    try:
        text = _normalise(textpage.get_text_range())
        left, bottom, right, top = page.get_cropbox()
        width, height = max(right - left, 1e-6), max(top - bottom, 1e-6)
        rotation = page.get_rotation() % 360
        runs: list[Run] = []
        for i in range(min(textpage.count_rects(), RUNS_MAX)):
            rl, rb, rr, rt = textpage.get_rect(i)
            run_text = textpage.get_text_bounded(rl, rb, rr, rt).replace("\r", "").replace("\n", " ")
            if not run_text.strip():
                continue
            # Top-down fractions of the unrotated page, then turned the way the page is shown.
            u0, u1 = (rl - left) / width, (rr - left) / width
            v0, v1 = (top - rt) / height, (top - rb) / height
            x0, y0, x1, y1 = _rotate(u0, v0, u1, v1, rotation)
            runs.append((round(x0, 5), round(y0, 5), round(x1 - x0, 5), round(y1 - y0, 5), run_text))
        return text, runs
    finally:
        textpage.close()


def _rotate(u0: float, v0: float, u1: float, v1: float, rotation: int) -> tuple[float, float, float, float]:
    corners = [(u0, v0), (u1, v1)]
    if rotation == 90:
        corners = [(1 - v, u) for u, v in corners]
    elif rotation == 180:
        corners = [(1 - u, 1 - v) for u, v in corners]
    elif rotation == 270:
        corners = [(v, 1 - u) for u, v in corners]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _normalise(text: str) -> str:
    # pdfium separates lines with CRLF; the text files use plain newlines like the text kind does.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if not text or text.endswith("\n") else text + "\n"
