"""Conversion benchmark: one long PDF on 1 vs 2 workers (and 1 vs every core), against pdftoppm, and
Office documents from upload to first page. Real gunicorn, real `rq worker`s, a throwaway Redis.

    source .venv/bin/activate
    python bench/convert_bench.py                 # ~3-4 min on 2 cores
    python bench/convert_bench.py --pages 300 --runs pdf   # a quick look

Prints a Markdown table (paste into BENCHMARKS.md) and writes bench/results/convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import devredis  # noqa: E402
from rq import Worker  # noqa: E402

from config import Settings  # noqa: E402
from livedoc.redis_client import connect  # noqa: E402
from tests import officegen, pdfgen  # noqa: E402
from tests.live import Stack, api  # noqa: E402

DPI = Settings().RENDER_DPI


def upload_and_time(stack: Stack, session, path: Path, timeout: float = 900) -> dict:
    """Upload a file; seconds to the first page being servable and to complete."""
    started = time.monotonic()
    with open(path, "rb") as f:
        resp = session.post(f"{stack.base_url}/api/documents", files={"file": (path.name, f)}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    first = None
    while time.monotonic() - started < timeout:
        resp = session.get(stack.base_url + body["status_url"], timeout=10)
        if resp.status_code == 429:  # the status poll's own rate limit: wait as told
            time.sleep(float(resp.headers.get("Retry-After", 1)))
            continue
        status = resp.json()
        now = time.monotonic() - started
        if first is None and (status.get("ready") or 0) >= 1:
            page = session.get(f"{stack.base_url}/api/documents/{body['id']}", timeout=10).json()["pages"][0]
            if session.get(stack.base_url + page["image"], timeout=10).status_code == 200:
                first = time.monotonic() - started
        if status["state"] in ("complete", "failed"):
            return {
                "first_page_s": round(first if first is not None else now, 2),
                "complete_s": round(now, 2),
                "state": status["state"],
                "pages": status["pages"],
            }
        time.sleep(0.05)
    raise RuntimeError("conversion did not finish")


def run_stack(work: Path, redis_url: str, workers: int, files: list[Path], **settings: str) -> list[dict]:
    """Start a deployment with `workers` workers, convert each file once, stop it."""
    conn = connect(redis_url)
    conn.flushdb()
    stack = Stack(redis_url, work, RATELIMIT_ENABLED="false", **settings)
    try:
        stack.start_web()
        for _ in range(workers):
            stack.start_worker()
        deadline = time.monotonic() + 30
        while len(Worker.all(connection=conn)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        session = api(stack.user(f"bench{time.monotonic_ns()}"))
        return [upload_and_time(stack, session, path) for path in files]
    finally:
        stack.stop()
        conn.flushdb()


def pdftoppm(path: Path, out: Path) -> float:
    """Seconds for `pdftoppm -r DPI -jpeg` to write every page (one process)."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run(["pdftoppm", "-r", str(DPI), "-jpeg", str(path), str(out / "p")], check=True)
    return round(time.monotonic() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1500)
    parser.add_argument("--runs", default="pdf,office", help="pdf, office or both")
    args = parser.parse_args()
    runs = set(args.runs.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="convert-bench-"))
    port = devredis.free_port()
    redis = devredis.start(port, tmp / "redis")
    url = f"redis://127.0.0.1:{port}/0"
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dpi": DPI,
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": [],
    }
    try:
        if "pdf" in runs:
            big = tmp / "big.pdf"
            big.write_bytes(
                pdfgen.make_pdf(
                    [
                        f"Page {n}: the quick brown fox jumps over the lazy dog. " * 8
                        for n in range(1, args.pages + 1)
                    ]
                )
            )
            if shutil.which("pdftoppm"):
                results["rows"].append(
                    {
                        "what": f"pdftoppm -r {DPI} -jpeg, {args.pages} pages (one process)",
                        "complete_s": pdftoppm(big, tmp / "ppm"),
                        "first_page_s": None,
                    }
                )
                shutil.rmtree(tmp / "ppm")
            for label, workers, settings in (
                (
                    "1 worker, 1 render process (before this change)",
                    1,
                    {"RENDER_PROCESSES": "1", "CHUNK_PAGES": "0"},
                ),
                ("1 worker, every core (RENDER_PROCESSES=0)", 1, {}),
                ("2 workers, 1 render process each, chunks of 200", 2, {"RENDER_PROCESSES": "1"}),
                ("2 workers, every core each, chunks of 200", 2, {}),
            ):
                row = run_stack(tmp / f"s{len(results['rows'])}", url, workers, [big], **settings)[0]
                results["rows"].append({"what": f"livedoc, {label}, {args.pages} pages", **row})
                print(results["rows"][-1], flush=True)
        if "office" in runs:
            pptx = officegen.make("pptx", [f"Slide{n}" for n in range(1, 31)], tmp / "slides.pptx")
            docx = officegen.make("docx", [f"Chapter{n}" for n in range(1, 51)], tmp / "handout.docx")
            rows = run_stack(tmp / "office", url, 1, [pptx, docx])
            for name, row in zip(("30-slide PPTX", "50-page DOCX"), rows):
                results["rows"].append({"what": f"livedoc, 1 worker, {name}", **row})
                print(results["rows"][-1], flush=True)
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    out = ROOT / "bench" / "results" / "convert.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nOne run on this machine ({results['host']}), {results['date']}, "
        "`python bench/convert_bench.py`:\n"
    )
    print("| what | upload → first page served (s) | upload → complete (s) |")
    print("|---|---|---|")
    for row in results["rows"]:
        first = "—" if row.get("first_page_s") is None else f"{row['first_page_s']:.2f}"
        print(f"| {row['what']} | {first} | {row['complete_s']:.2f} |")


if __name__ == "__main__":
    main()
