"""Time to the first page and to the last: upload -> page 1's image served, and upload -> complete.

    .venv/bin/python bench/first_page.py                 # a generated 1,500-page PDF and a real book
    .venv/bin/python bench/first_page.py --runs 3 --workers 1

Loopback only: a throwaway Redis, one gunicorn (gevent) and `scripts/worker` processes, started and
stopped here. The real book is GNU Octave's manual (1,158 pages, with bookmarks) from Debian's
octave-doc package, fetched with `apt-get download` into bench/.cache: nobody here generated it.
The clock starts before the upload request is sent; "first page" is when GET page-0001.jpg first
answers 200 (polling the status every 10 ms, then the file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import devredis  # noqa: E402

from tests.live import Stack, api  # noqa: E402
from tests.pdfgen import make_pdf  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
OCTAVE = "usr/share/doc/octave/octave.pdf"


def generated(pages: int) -> bytes:
    """A text PDF of `pages` pages (each with a few lines, like a plain manual)."""
    return make_pdf(
        [
            f"Page {i} of the generated book\n"
            + "\n".join(
                f"Line {j} of page {i}: the quick brown fox jumps over the lazy dog." for j in range(1, 30)
            )
            for i in range(1, pages + 1)
        ]
    )


def real_book() -> Path:
    """GNU Octave's manual from Debian's octave-doc package (cached)."""
    target = CACHE / OCTAVE
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "-qq", "octave-doc"], cwd=tmp, check=True)
            deb = next(Path(tmp).glob("octave-doc_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE)], check=True)
    return target


class PeakRss:
    """The largest RSS any process of the worker's tree (the work horse included) reached."""

    def __init__(self, pids: list[int]):
        import psutil

        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self.stop.wait(0.05):
            for proc in self.procs:
                try:
                    tree = [proc, *proc.children(recursive=True)]
                    self.peak = max(self.peak, max(p.memory_info().rss for p in tree))
                except psutil.Error:
                    pass

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def measure(stack: Stack, token: str, name: str, data: bytes) -> dict:
    """One upload, timed to page 1 served and to complete, with the worker's peak RSS."""
    with PeakRss([w.popen.pid for w in stack.workers]) as rss:
        row = _measure(stack, token, name, data)
    return {**row, "worker_peak_rss_mb": round(rss.peak / 2**20, 1)}


def _measure(stack: Stack, token: str, name: str, data: bytes) -> dict:
    s = api(token)
    base = stack.base_url
    started = time.perf_counter()
    resp = s.post(f"{base}/api/documents", files={"file": (name, data, "application/pdf")}, timeout=120)
    uploaded = time.perf_counter() - started
    resp.raise_for_status()
    body = resp.json()
    first = None
    status = {}
    while True:
        status = s.get(base + body["status_url"], timeout=30).json()
        if first is None and status.get("ready", 0) >= 1:
            files = s.get(f"{base}/api/documents/{body['id']}", timeout=30).json()["files_url"]
            if s.get(base + files + "page-0001.jpg", timeout=30).status_code == 200:
                first = time.perf_counter() - started
        if status["state"] in ("complete", "failed"):
            break
        time.sleep(0.01)
    complete = time.perf_counter() - started
    if status["state"] != "complete":
        raise RuntimeError(f"{name} failed: {status}")
    out = stack.dir / "storage" / body["id"] / f"a{status['attempt']}"
    stored = sum(p.stat().st_size for p in out.iterdir())
    s.delete(f"{base}/api/documents/{body['id']}", timeout=30)
    return {
        "document": name,
        "pages": status["pages"],
        "upload_s": round(uploaded, 3),
        "first_page_s": round(first, 3),
        "complete_s": round(complete, 3),
        "first_share": round(first / complete, 4),
        "bytes_per_page": round(stored / status["pages"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pages", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "first_page.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="livedoc-first-page-"))
    port = devredis.free_port()
    redis = devredis.start(port, work / "redis", work / "redis.log")
    stack = Stack(
        f"redis://127.0.0.1:{port}/0",
        work / "stack",
        RATELIMIT_STREAM="100000 per minute",
        RATELIMIT_UPLOAD="1000 per minute",
        MAX_UPLOAD_MB="200",
        LOG_LEVEL="WARNING",
    )
    try:
        stack.start_web()
        for _ in range(args.workers):
            stack.start_worker()
        token = stack.user("bench")
        inputs = [
            (f"generated {args.pages} pages", generated(args.pages)),
            ("GNU Octave manual (Debian octave-doc)", real_book().read_bytes()),
        ]
        time.sleep(2)  # the workers register
        rows = []
        for name, data in inputs:
            runs = [measure(stack, token, name, data) for _ in range(args.runs)]
            rows.append(
                {
                    **runs[0],
                    "runs": runs,
                    "first_page_s": statistics.median(r["first_page_s"] for r in runs),
                    "complete_s": statistics.median(r["complete_s"] for r in runs),
                    "first_share": statistics.median(r["first_share"] for r in runs),
                }
            )
    finally:
        stack.stop()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "workers": args.workers,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        "| document | pages | upload → first page served | upload → complete | first / complete | "
        "storage per page | worker peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['document']} | {r['pages']} | {r['first_page_s']:.2f} s | {r['complete_s']:.1f} s | "
            f"{100 * r['first_share']:.1f}% | {r['bytes_per_page'] / 1024:.0f} kB | "
            f"{max(x['worker_peak_rss_mb'] for x in r['runs']):.0f} MB |"
        )


if __name__ == "__main__":
    main()
