"""PDF uploads via pypdfium2: check the whole document first, then render and extract page by page."""
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
from workers.images import MAX_SIDE, PageCallback, write_page

POINTS_PER_INCH = 72


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


def check_document(doc: pdfium.PdfDocument, settings: Settings) -> int:
    """Refuse empty, too long or too large documents before any page is rendered; returns pages."""
    pages = len(doc)
    if pages == 0:
        raise EmptyDocument()
    if pages > settings.MAX_PAGES:
        raise TooManyPages(f"The document has {pages} pages; the limit is {settings.MAX_PAGES}.")
    scale = settings.RENDER_DPI / POINTS_PER_INCH
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
    return pages


def convert(source: Path, work: Path, settings: Settings, on_page: PageCallback) -> list[dict]:
    """Render every page of a PDF to JPEG plus thumbnail and extract its text; returns the page list."""
    doc = open_document(source)
    try:
        pages = check_document(doc, settings)
        # Without this, filled-in form fields would render empty.
        doc.init_forms()
        scale = settings.RENDER_DPI / POINTS_PER_INCH
        page_list = []
        for index in range(pages):
            on_page(index + 1, pages)
            page_list.append(_convert_page(doc, index, work, scale, settings))
        return page_list
    finally:
        # pdfium holds native memory that Python's GC does not see; close deterministically.
        doc.close()


def _convert_page(doc: pdfium.PdfDocument, index: int, work: Path, scale: float, settings: Settings) -> dict:
    try:
        page = doc[index]
    except pdfium.PdfiumError:
        raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
    try:
        try:
            textpage = page.get_textpage()
            try:
                text = textpage.get_text_range()
            finally:
                textpage.close()
            bitmap = page.render(scale=scale, rev_byteorder=True)
        except pdfium.PdfiumError:
            raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
        try:
            # The PIL image may share the bitmap's buffer, so it is written before the bitmap closes.
            image = bitmap.to_pil()
            entry = write_page(work, index + 1, image, _normalise(text), settings)
            image.close()
            return entry
        finally:
            bitmap.close()
    finally:
        page.close()


def _normalise(text: str) -> str:
    # pdfium separates lines with CRLF; the text files use plain newlines like the text kind does.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if not text or text.endswith("\n") else text + "\n"
