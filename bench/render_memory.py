"""Memory of one render process over a long real PDF, with and without reopening the document.

    .venv/bin/python bench/render_memory.py [--pdf FILE] [--reopen 200]

Renders every page in this process (RENDER_PROCESSES=1) through `workers.pdf.render_pages` into a
throwaway local storage (emptied every 100 pages) and prints the resident set size every 250 pages.
pdfium caches fonts and images per open document; `--reopen 0` never reopens it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402
from livedoc.ids import new_doc_id  # noqa: E402
from livedoc.storage import DocumentFiles, LocalStorage  # noqa: E402
from workers import pdf  # noqa: E402

OCTAVE = ROOT / "bench" / ".cache" / "usr" / "share" / "doc" / "octave" / "octave.pdf"


def rss_mb() -> float:
    """This process's resident set size now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pdf", default=str(OCTAVE), help="default: the GNU Octave manual (apt-get download octave-doc)"
    )
    parser.add_argument(
        "--reopen", type=int, default=pdf.REOPEN_EVERY, help="pages per open (0: never reopen)"
    )
    args = parser.parse_args()
    pdf.REOPEN_EVERY = args.reopen or 10**9
    source = Path(args.pdf)
    work = Path(tempfile.mkdtemp(prefix="livedoc-rendermem-"))
    (work / "scratch").mkdir()
    files = DocumentFiles(LocalStorage(work / "storage"), new_doc_id())
    doc = pdf.open_document(source)
    pages = len(doc)
    doc.close()
    marks: dict[int, float] = {}

    def reported(entry: dict, size: int) -> None:
        if entry["n"] % 250 == 0:
            marks[entry["n"]] = round(rss_mb(), 1)
        if entry["n"] % 100 == 0:
            files.storage.delete_prefix(files.attempt_prefix(1))

    pdf.render_pages(source, Settings(RENDER_PROCESSES=1), work / "scratch", files, 1, 1, pages, reported)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000
    print(
        f"{source.name}, {pages} pages, reopen every {args.reopen or 'never'}: RSS MB at page "
        + ", ".join(f"{n}: {mb}" for n, mb in marks.items())
        + f"; peak {peak:.1f}"
    )


if __name__ == "__main__":
    main()
