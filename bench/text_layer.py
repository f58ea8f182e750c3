"""What a page's text layer costs, and the address space a work horse needs (issue M, item 2).

    .venv/bin/python bench/text_layer.py [--chars 100000,300000,600000] [--old] [--pages 300]

Times are CPU seconds of this process (time.process_time): the machine is shared, and wall time
under load says more about the neighbours than about the code.

1. For one-page PDFs of N characters (tests/pdfgen.py `dense_text_pdf`: one short string a line, so
   N / 10 text objects), the seconds `workers.pdf.page_text` takes, and with --old the code before
   (pdfium's rectangles, each read with FPDFText_GetBoundedText: quadratic, 31 s at 300,000).
2. The same for every page of a real manual (/usr/share/doc/libtasn1-doc/libtasn1.pdf) if installed:
   ms a page, new and old.
3. A `--pages`-page text PDF converted by livedoc's forking worker (tests/hostile_child.py with
   HOSTILE_WORKER=livedoc): the peak address space (VmPeak) of the work horse and of each render
   process, sampled from /proc, against WORKER_MEMORY_MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pypdfium2 as pdfium  # noqa: E402

from tests import pdfgen  # noqa: E402
from workers import pdf  # noqa: E402

REAL_PDF = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")


def old_runs(page: pdfium.PdfPage) -> int:
    """The text layer as it was read before: one bounded text read per rectangle."""
    textpage = page.get_textpage()
    try:
        textpage.get_text_range()
        kept = 0
        for i in range(min(textpage.count_rects(), pdf.RUNS_MAX)):
            rect = textpage.get_rect(i)
            kept += bool(textpage.get_text_bounded(*rect).strip())
        return kept
    finally:
        textpage.close()


def time_page(path: Path, old: bool) -> tuple[float, float | None, int]:
    doc = pdfium.PdfDocument(path)
    try:
        page = doc[0]
        chars = page.get_textpage().count_chars()
        started = time.process_time()
        pdf.page_text(page)
        new = time.process_time() - started
        before = None
        if old:
            started = time.process_time()
            old_runs(page)
            before = time.process_time() - started
        return new, before, chars
    finally:
        doc.close()


def real_manual(old: bool) -> None:
    if not REAL_PDF.exists():
        return
    doc = pdfium.PdfDocument(REAL_PDF)
    new = before = 0.0
    for index in range(len(doc)):
        page = doc[index]
        started = time.process_time()
        pdf.page_text(page)
        new += time.process_time() - started
        if old:
            started = time.process_time()
            old_runs(page)
            before += time.process_time() - started
        page.close()
    pages = len(doc)
    doc.close()
    figures = f"{REAL_PDF.name}, {pages} pages: new {new * 1000 / pages:.1f} ms a page"
    print(figures + (f", old {before * 1000 / pages:.1f} ms a page" if old else ""))


def descendants(pid: int) -> list[int]:
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *descendants(child)]
    return found


def role(pid: int, worker: int) -> str:
    """What a process under the worker is: its work horse, a render process, or something it ran."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return "gone"
    parent = int(stat.rsplit(")", 1)[1].split()[1])
    if "python" not in command:
        return f"program {Path(command).name}"
    return "work horse" if parent == worker else "render process"


def vm_peak(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def horse_memory(pages: int) -> None:
    """Convert a `pages`-page PDF with the forking worker; report the largest VmPeak seen per process."""
    redis_port = 6399
    server = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "book.pdf"
            texts = [
                f"Page {n} of the book\n" + "\n".join(["lorem ipsum dolor sit amet " * 3] * 40)
                for n in range(pages)
            ]
            source.write_bytes(pdfgen.make_pdf(texts))
            url = f"redis://127.0.0.1:{redis_port}/0"
            env = {
                "PATH": "/usr/bin:/bin",
                "REDIS_URL": url,
                "STORAGE_DIR": str(Path(tmp) / "storage"),
                "HOSTILE_WORKER": "livedoc",
                "WORKER_NICE": "0",
            }
            child = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests" / "hostile_child.py"),
                    url,
                    str(Path(tmp) / "storage"),
                    "pdf",
                    str(source),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            peaks: dict[int, int] = {}
            parents: dict[int, str] = {}
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    for pid in descendants(child.pid):
                        peaks[pid] = max(peaks.get(pid, 0), vm_peak(pid))
                        if pid not in parents:
                            parents[pid] = role(pid, child.pid)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            out, _ = child.communicate()
            done.set()
            sampler.join()
            state = out.strip().splitlines()[-1][:120] if out.strip() else "?"
            print(f"{pages}-page PDF through the forking worker: {state} ...")
            worker_peak = vm_peak(child.pid)
            print(f"  worker process (parent) VmPeak {worker_peak} MB (at its end)")
            for pid, peak in sorted(peaks.items(), key=lambda item: -item[1]):
                print(f"  {parents.get(pid, '?')} {pid}: VmPeak {peak} MB")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chars", default="100000,300000,600000")
    parser.add_argument("--old", action="store_true", help="also time the code before (slow: minutes)")
    parser.add_argument("--pages", type=int, default=300)
    args = parser.parse_args()
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{now}, load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for chars in [int(c) for c in args.chars.split(",")]:
            path = Path(tmp) / f"dense-{chars}.pdf"
            path.write_bytes(pdfgen.dense_text_pdf(chars))
            new, before, count = time_page(path, args.old)
            size = path.stat().st_size
            line = f"{chars:,} characters ({size:,} bytes, {count:,} pdfium chars): new {new:.2f} s"
            print(line + (f", old {before:.2f} s" if before is not None else ""))
    real_manual(args.old)
    if args.pages:
        horse_memory(args.pages)


if __name__ == "__main__":
    main()
