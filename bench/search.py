"""Search under load: another user's GET /api/me while ten searches run at once, old code and new.

    .venv/bin/python bench/search.py                     # 2,000 pages of ~4 KB text, 3 rounds of 10
    .venv/bin/python bench/search.py --pages 500 --rounds 1

Loopback only: a throwaway Redis, one worker (`scripts/worker`) and two gunicorn (gevent) web
processes on the same Redis, database and storage: one runs this tree, the other the tree of the
commit before search was bounded (`git archive`, default: the parent of the commit that removed
livedoc/documents.py's `_hit_rects`), so both search the same converted document. Each round sends
ten searches at once (threads, a session each) for words the document does not hold (every page is
read: the worst case), while another user calls GET /api/me every 10 ms; then the same on the
other web process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
import requests  # noqa: E402

from tests.live import BIN, Proc, Stack, api, wait_http  # noqa: E402
from tests.pdfgen import make_pdf  # noqa: E402

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will more can "
    "who said what up its about into than them only other new some could these two may first then do "
    "any like my now over such our man me even most made after also did many before must through back "
    "years where much your way well down should because each just those people how too little state "
    "good very make world still own see men work long get here between both life being under never day "
    "same another know while last might us great old year off come since against go came right used "
    "take three document page conversion reader viewer server process worker storage search result"
).split()


def generated(pages: int, seed: int = 1) -> bytes:
    """A PDF of `pages` pages of prose-like text, ~4 KB each (55 lines of ~75 characters)."""
    rng = random.Random(seed)
    texts = []
    for i in range(1, pages + 1):
        lines = [f"Chapter {1 + i // 20}, page {i}"]
        for _ in range(55):
            words, size = [], 0
            while size < 72:
                w = rng.choice(WORDS)
                words.append(w)
                size += len(w) + 1
            lines.append(" ".join(words).capitalize() + ".")
        texts.append("\n".join(lines))
    return make_pdf(texts)


def old_tree(work: Path, rev: str | None) -> tuple[Path, str]:
    """The source of the commit before search was bounded, unpacked under work."""
    if rev is None:
        removed = subprocess.run(
            ["git", "log", "-1", "--format=%H", "-S", "def _hit_rects", "--", "livedoc/documents.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        rev = f"{removed}^"
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = work / "old"
    target.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, sha


def start_web_from(stack: Stack, tree: Path, name: str) -> tuple[Proc, str]:
    """A gunicorn of another source tree on the stack's settings (Redis, database, storage)."""
    port = devredis.free_port()
    cmd = [
        str(BIN / "gunicorn"),
        "-c",
        str(tree / "gunicorn.conf.py"),
        "--pythonpath",
        str(tree),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--no-control-socket",
        "wsgi:app",
    ]
    proc = Proc(name, cmd, stack.env, stack.dir, tree).start()
    stack.webs.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/login")
    return proc, base


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def measure(base: str, searcher: str, bystander: str, doc_id: str, rounds: int, concurrency: int) -> dict:
    """Rounds of `concurrency` simultaneous searches while the bystander polls /api/me."""
    other = api(bystander)
    idle = []
    for _ in range(200):
        t0 = time.perf_counter()
        assert other.get(f"{base}/api/me", timeout=60).status_code == 200
        idle.append(time.perf_counter() - t0)
        time.sleep(0.005)
    me: list[float] = []
    searches: list[tuple[int, float, dict]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = other.get(f"{base}/api/me", timeout=120).status_code == 200
            except requests.RequestException:
                ok = False
            me.append(time.perf_counter() - t0 if ok else float("inf"))
            time.sleep(0.01)

    def search(i: int) -> None:
        s = api(searcher)
        t0 = time.perf_counter()
        try:
            resp = s.get(f"{base}/api/documents/{doc_id}/search", params={"q": f"zebra{i}"}, timeout=300)
            code, body = resp.status_code, (resp.json() if resp.status_code == 200 else {})
        except requests.RequestException:
            code, body = -1, {}
        searches.append((code, time.perf_counter() - t0, body))

    watcher = threading.Thread(target=poll)
    watcher.start()
    time.sleep(0.5)
    for r in range(rounds):
        threads = [threading.Thread(target=search, args=(r * concurrency + i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)
    stop.set()
    watcher.join()
    ok = [(t, b) for code, t, b in searches if code == 200]
    return {
        "me_idle_p50_ms": 1000 * statistics.median(idle),
        "me_idle_p99_ms": 1000 * pct(idle, 99),
        "me_calls": len(me),
        "me_p50_ms": 1000 * statistics.median(me),
        "me_p99_ms": 1000 * pct(me, 99),
        "me_max_ms": 1000 * max(me),
        "searches": len(searches),
        "status": {str(c): sum(1 for x in searches if x[0] == c) for c in sorted({x[0] for x in searches})},
        "search_p50_s": statistics.median(t for t, _ in ok) if ok else None,
        "search_p99_s": pct([t for t, _ in ok], 99) if ok else None,
        "all_p99_s": pct([t for _, t, _ in searches], 99),
        "truncated": sum(1 for _, b in ok if b.get("truncated")),
        "searched_pages_median": statistics.median(b["searched_pages"] for _, b in ok) if ok else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--old-rev", default=None, help="the commit whose search to compare with")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="livedoc-search-"))
    port = devredis.free_port()
    redis = devredis.start(port, work / "redis", work / "redis.log")
    stack = Stack(
        f"redis://127.0.0.1:{port}/0",
        work / "stack",
        RATELIMIT_STREAM="100000 per minute",
        RATELIMIT_SEARCH="100000 per minute",
        RATELIMIT_UPLOAD="1000 per minute",
        MAX_UPLOAD_MB="200",
        LOG_LEVEL="WARNING",
    )
    rows = []
    try:
        old, old_sha = old_tree(work, args.old_rev)
        stack.start_web()
        new_base = stack.base_url
        _, old_base = start_web_from(stack, old, "web-old")
        stack.start_worker()
        searcher, bystander = stack.user("searcher"), stack.user("bystander")
        data = generated(args.pages)
        resp = api(searcher).post(
            f"{new_base}/api/documents", files={"file": ("book.pdf", data, "application/pdf")}, timeout=60
        )
        assert resp.status_code == 201, resp.text
        doc = resp.json()
        t0 = time.monotonic()
        while True:
            status = api(searcher).get(new_base + doc["status_url"], timeout=10).json()
            if status["state"] in ("complete", "failed"):
                break
            time.sleep(1)
        assert status["state"] == "complete", status
        convert_s = time.monotonic() - t0
        text_bytes = sum(p.stat().st_size for p in (work / "stack" / "storage").rglob("text-*.txt"))
        for label, base in ((f"old ({old_sha})", old_base), ("new", new_base)):
            row = measure(base, searcher, bystander, doc["id"], args.rounds, args.concurrency)
            rows.append({"code": label, **row})
            print(label, json.dumps(row), flush=True)
    finally:
        logs = {p.name: p.log()[-2000:] for p in stack.webs}
        stack.stop()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "pages": args.pages,
        "text_bytes": text_bytes,
        "convert_s": convert_s,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "worker_timeouts": {name: log.count("WORKER TIMEOUT") for name, log in logs.items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"\n{args.pages} pages, {text_bytes / 1e6:.1f} MB of text; {args.rounds} rounds of "
        f"{args.concurrency} searches at once\n"
    )
    print(
        "| code | /api/me idle p99 | /api/me p50 / p99 / max during searches | search p50 / p99 (200s) "
        "| answers | truncated | pages searched (median) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        p50 = f"{r['search_p50_s']:.2f}" if r["search_p50_s"] is not None else "-"
        p99 = f"{r['search_p99_s']:.2f}" if r["search_p99_s"] is not None else "-"
        print(
            f"| {r['code']} | {r['me_idle_p99_ms']:.1f} ms | {r['me_p50_ms']:.1f} / {r['me_p99_ms']:.0f} / "
            f"{r['me_max_ms']:.0f} ms | {p50} / {p99} s | {r['status']} | {r['truncated']} "
            f"| {r['searched_pages_median']} |"
        )


if __name__ == "__main__":
    main()
