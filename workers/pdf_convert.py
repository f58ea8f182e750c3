"""The PDF stage: check the whole document, then render its pages here or as page ranges on every worker.

It sits above workers/pdf.py (pdfium: checking and rendering pages) and workers/chunks.py (page-range
jobs, which render through workers/pdf.py), so that neither of those two imports the other.
"""

from __future__ import annotations

from pathlib import Path

from config import Settings
from workers import chunks, pdf
from workers.pages import PageSink


def convert(source: Path, settings: Settings, sink: PageSink) -> None:
    """Render every page of a PDF to JPEG plus thumbnail, text and text layer, made ready in page order."""
    doc = pdf.open_document(source)
    try:
        sizes = pdf.check_document(doc, settings)
        sink.begin(sizes, pdf.outline(doc))
    finally:
        # pdfium holds native memory that Python's GC does not see; close deterministically.
        doc.close()
    if chunks.wanted(settings, len(sizes)):
        chunks.run(source, settings, sink)
    else:
        pdf.render_pages(
            source,
            settings,
            sink.scratch,
            sink.files,
            sink.attempt,
            1,
            len(sizes),
            sink.stored_page,
            skip=sink.kept,
        )
