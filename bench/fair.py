"""Users in turn: old code (FIFO over jobs) and new (livedoc/fair.py) side by side, two workers each.

    .venv/bin/python bench/fair.py                 # both codes; ~10 min on 2 shared cores
    .venv/bin/python bench/fair.py --only new --runs 2

Loopback only, everything started and stopped here. For each code (the old one is the tree of the
commit before livedoc/fair.py came, `git archive`), a throwaway Redis, one gunicorn (gevent) web
process and two `scripts/worker` processes of that tree, default settings (CHUNK_PAGES 200, a render
process per core, HD_DPI 300); both share one database of users and stay up together. Each
scenario runs on the old code, then on the new one, then the next scenario:

- small alone: a real 36-page PDF (libtasn1's manual from Debian, else a generated one);
- book alone: a generated 1,221-page PDF (tests/pdfgen.py, 30 lines of text a page);
- shared: the book, then another user's small PDF 1.5 s after the book's upload started;
- sharper pages: one user asks for 40 pages' sharper renditions of a converted 40-page PDF, then
  another user uploads a 2-page PDF (and the 2-page PDF alone, for reference);
- 20 users: twenty users upload the small PDF at the same moment.

Clocks start before the upload request is sent. "First page" is when the document's progress in
Redis first says ready >= 1 (read for every document in one pipelined round trip every 20 ms; each
first page is then fetched once over HTTP to check it is served), "complete" when it says complete.
Polling Redis rather than the web keeps 20 pollers from taking the cores the conversions need.
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
import requests  # noqa: E402

from livedoc import progress  # noqa: E402
from livedoc.redis_client import connect  # noqa: E402
from tests import dbs  # noqa: E402
from tests.live import BIN, Proc, Stack, api, wait_http  # noqa: E402
from tests.pdfgen import make_pdf  # noqa: E402

REAL_SMALL = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")
BOOK_PAGES = 1221
SETTINGS = {
    "RATELIMIT_STREAM": "100000 per minute",
    "RATELIMIT_UPLOAD": "100000 per minute",
    "MAX_UPLOAD_MB": "200",
    "QUOTA_MB": "100000",
    "LOG_LEVEL": "WARNING",
    "HD_WAIT": "2",
}


def book(pages: int) -> bytes:
    """A generated text PDF of `pages` pages."""
    line = "the quick brown fox jumps over the lazy dog, again and again"
    return make_pdf(
        [
            f"Page {i} of the book\n" + "\n".join(f"{j}: {line}" for j in range(30))
            for i in range(1, pages + 1)
        ]
    )


def small_pdf() -> tuple[str, bytes]:
    """The real 36-page manual when the host has it, else 36 generated pages."""
    if REAL_SMALL.is_file():
        return "libtasn1.pdf (36 pages, real)", REAL_SMALL.read_bytes()
    return "generated 36 pages", book(36)


def old_tree(work: Path, rev: str | None) -> tuple[Path, str]:
    """The tree of the commit before livedoc/fair.py (or `rev`), unpacked under work."""
    if rev is None:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", "livedoc/fair.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        rev = f"{added}^"
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = work / "old"
    target.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    # That commit's documents.py already called fleet.waiting_place (committed a moment before the
    # scheduler, in 184cbf3): put back the call it replaced, so the old web answers as it did.
    docs = target / "livedoc" / "documents.py"
    text = docs.read_text()
    if "waiting_place" in text and "def waiting_place" not in (target / "livedoc" / "fleet.py").read_text():
        start = text.index('    queue_name, cap = config["QUEUE_NAME"]')
        end = text.index("\n", text.index("fleet.waiting_place", start))
        text = (
            text[:start]
            + '    return fleet.queue_info(connection, config["QUEUE_NAME"], doc.job_id)'
            + text[end:]
        )
        docs.write_text(text)
    return target, sha


class Deployment:
    """A Redis, one web process and two workers of one source tree."""

    def __init__(self, work: Path, name: str, tree: Path, database_url: str, workers: int):
        self.name, self.tree = name, tree
        port = devredis.free_port()
        self.redis = devredis.start(port, work / f"redis-{name}", work / f"redis-{name}.log")
        self.stack = Stack(f"redis://127.0.0.1:{port}/0", work / name, DATABASE_URL=database_url, **SETTINGS)
        self.conn = connect(self.stack.redis_url)
        self._web()
        for i in range(workers):
            self._worker(i)
        deadline = time.monotonic() + 30
        while len(self.conn.keys("rq:worker:*")) < workers and time.monotonic() < deadline:
            time.sleep(0.2)

    def _web(self) -> None:
        port = devredis.free_port()
        cmd = [
            str(BIN / "gunicorn"),
            "-c",
            str(self.tree / "gunicorn.conf.py"),
            "--pythonpath",
            str(self.tree),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--no-control-socket",
            "wsgi:app",
        ]
        self.stack.webs.append(
            Proc(f"web-{self.name}", cmd, self.stack.env, self.stack.dir, self.tree).start()
        )
        self.stack.ports.append(port)
        wait_http(f"{self.stack.base_url}/login")

    def _worker(self, i: int) -> None:
        cmd = ["bash", str(self.tree / "scripts" / "worker"), "-n", f"bench-{self.name}-{i}-{os.getpid()}"]
        env = {**self.stack.env, "PATH": f"{BIN}:{self.stack.env.get('PATH', '')}"}
        self.stack.workers.append(
            Proc(f"worker-{self.name}-{i}", cmd, env, self.stack.dir, self.tree).start()
        )

    def stop(self) -> None:
        self.stack.stop()
        self.conn.connection_pool.disconnect()
        self.redis.terminate()
        self.redis.wait(10)


class Watch:
    """The first time each watched job's progress says ready >= 1, and when it says complete."""

    def __init__(self, conn):
        self.conn = conn
        self.jobs: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, job_id: str) -> None:
        with self.lock:
            self.jobs[job_id] = {}

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                pending = [j for j, seen in self.jobs.items() if "end" not in seen]
            now = time.perf_counter()
            for job_id, prog in progress.read_many(self.conn, pending).items():
                if prog is None:
                    continue
                seen = self.jobs[job_id]
                if "first" not in seen and (prog.get("ready") or 0) >= 1:
                    seen["first"] = now
                if prog["state"] in ("complete", "failed"):
                    seen["end"], seen["state"] = now, prog["state"]
            time.sleep(0.02)

    def wait(self, job_ids: list[str], timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not all("end" in self.jobs[j] for j in job_ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"not finished within {timeout} s: {job_ids}")
            time.sleep(0.1)
        failed = [j for j in job_ids if self.jobs[j]["state"] != "complete"]
        if failed:
            raise RuntimeError(f"failed: {failed}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class Bench:
    """The scenarios on one deployment."""

    def __init__(self, dep: Deployment, tokens: dict[str, str], small: bytes, big: bytes):
        self.dep, self.tokens, self.small, self.big = dep, tokens, small, big
        self.base = dep.stack.base_url
        self.watch = Watch(dep.conn)

    def upload(self, user: str, data: bytes, name: str) -> dict:
        """Upload and start watching; returns the body plus `t0` (before the request was sent)."""
        session = api(self.tokens[user])
        t0 = time.perf_counter()
        resp = session.post(
            f"{self.base}/api/documents", files={"file": (name, data, "application/pdf")}, timeout=300
        )
        resp.raise_for_status()
        body = resp.json()
        job = f"doc-{body['id']}-1"
        self.watch.add(job)
        return {**body, "t0": t0, "job": job, "user": user}

    def times(self, doc: dict) -> dict:
        seen = self.watch.jobs[doc["job"]]
        return {
            "first_s": round(seen["first"] - doc["t0"], 3),
            "complete_s": round(seen["end"] - doc["t0"], 3),
        }

    def served(self, doc: dict) -> bool:
        """Page 1's image is served (checked once, after the clock)."""
        session = api(self.tokens[doc["user"]])
        files = session.get(f"{self.base}/api/documents/{doc['id']}", timeout=60).json()["files_url"]
        return session.get(self.base + files + "page-0001.jpg", timeout=60).status_code == 200

    def finish(self, *docs: dict) -> list[dict]:
        self.watch.wait([d["job"] for d in docs])
        assert all(self.served(d) for d in docs), "a first page was not served"
        time.sleep(1)  # the workers go idle
        return [self.times(d) for d in docs]

    def small_alone(self) -> dict:
        (row,) = self.finish(self.upload("reader", self.small, "small.pdf"))
        return row

    def book_alone(self) -> dict:
        (row,) = self.finish(self.upload("author", self.big, "book.pdf"))
        return row

    def shared(self, delay: float = 1.5) -> dict:
        big = self.upload("author", self.big, "book.pdf")
        time.sleep(max(0.0, big["t0"] + delay - time.perf_counter()))
        small = self.upload("reader", self.small, "small.pdf")
        book_row, small_row = self.finish(big, small)
        return {"book": book_row, "small": small_row, "small_after_book_s": round(small["t0"] - big["t0"], 3)}

    def sharper(self, pages: int = 40) -> dict:
        two = make_pdf(["a", "b"])
        (alone,) = self.finish(self.upload("other", two, "two.pdf"))
        zoomed = self.upload(
            "zoomer",
            make_pdf([f"Zoom page {n}\n" + "fine print " * 60 for n in range(1, pages + 1)]),
            "z.pdf",
        )
        self.finish(zoomed)
        session = api(self.tokens["zoomer"])
        doc = session.get(f"{self.base}/api/documents/{zoomed['id']}", timeout=60).json()
        asked = []

        def ask(url: str) -> None:
            try:
                session_ = api(self.tokens["zoomer"])
                asked.append(session_.get(self.base + url, timeout=60).status_code)
            except requests.RequestException:
                asked.append(-1)

        threads = [threading.Thread(target=ask, args=(p["hd"],), daemon=True) for p in doc["pages"]]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        hd_jobs = [f"hd-{zoomed['id']}-1-{n}" for n in range(1, pages + 1)]
        while not all(self.dep.conn.exists(f"rq:job:{j}") for j in hd_jobs) and time.monotonic() < deadline:
            time.sleep(0.02)
        (shared,) = self.finish(self.upload("other", two, "two.pdf"))
        done_then = sum(self.dep.conn.hget(f"rq:job:{j}", "status") == b"finished" for j in hd_jobs)
        deadline = time.monotonic() + 300
        while not all(self.dep.conn.hget(f"rq:job:{j}", "status") == b"finished" for j in hd_jobs):
            if time.monotonic() > deadline:
                raise RuntimeError("sharper pages not all rendered")
            time.sleep(0.1)
        for t in threads:
            t.join(60)
        time.sleep(1)
        return {
            "two_alone": alone,
            "two_shared": shared,
            "hd_done_when_two_completed": done_then,
            "hd": pages,
        }

    def twenty(self, users: int = 20) -> dict:
        barrier = threading.Barrier(users)
        docs: list[dict] = []

        def one(i: int) -> None:
            barrier.wait()
            docs.append(self.upload(f"crowd{i}", self.small, f"c{i}.pdf"))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        rows = self.finish(*docs)
        first = sorted(r["first_s"] for r in rows)
        return {
            "first_p50_s": statistics.median(first),
            "first_p99_s": pct(first, 99),
            "first_max_s": first[-1],
            "complete_max_s": max(r["complete_s"] for r in rows),
            "first_s": first,
        }

    def close(self) -> None:
        self.watch.close()


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


SCENARIOS = ("small_alone", "book_alone", "shared", "sharper", "twenty")


def run_codes(
    work: Path, codes: list, database_url: str, tokens: dict, small: bytes, big: bytes, runs: int
) -> dict:
    """Every scenario on each code in turn (old, then new, then the next scenario): both deployments
    stay up, idle while the other runs, so a change in the machine's load falls on both alike."""
    deps = {label: Deployment(work, label.split()[0], tree, database_url, workers=2) for label, tree in codes}
    benches = {label: Bench(dep, tokens, small, big) for label, dep in deps.items()}
    out = {label: {s: [] for s in SCENARIOS} for label in deps}
    try:
        for _ in range(runs):
            for scenario in SCENARIOS:
                for label, bench in benches.items():
                    row = getattr(bench, scenario)()
                    out[label][scenario].append(row)
                    print(label, scenario, json.dumps(row), flush=True)
    finally:
        for label in deps:
            benches[label].close()
            deps[label].stop()
    return out


def med(rows: list, *path: str) -> float:
    values = []
    for row in rows:
        for key in path:
            row = row[key]
        values.append(row)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", choices=["old", "new"], default=None)
    parser.add_argument("--old-rev", default=None, help="the commit to compare with")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fair.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="livedoc-fair-"))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    name, small = small_pdf()
    big = book(BOOK_PAGES)
    results: dict = {}
    try:
        database_url = dbs.fresh(work)
        users = Stack("redis://127.0.0.1:1/0", work / "users", DATABASE_URL=database_url)
        names = ["author", "reader", "zoomer", "other", *(f"crowd{i}" for i in range(20))]
        tokens = {n: users.user(n) for n in names}
        codes = []
        if args.only != "new":
            tree, sha = old_tree(work, args.old_rev)
            codes.append((f"old ({sha})", tree))
        if args.only != "old":
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--", "livedoc", "workers"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout
            codes.append((f"new ({sha}{'+' if dirty.strip() else ''})", ROOT))
        results = run_codes(work, codes, database_url, tokens, small, big, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": started,
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "small": name,
        "book_pages": BOOK_PAGES,
        "runs": args.runs,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    report(result)


def report(result: dict) -> None:
    """The table for BENCHMARKS.md (medians over runs)."""
    labels = list(result["results"])
    print(
        f"\n{result['small']}; book {result['book_pages']} generated pages; two workers; "
        f"medians of {result['runs']} run(s)\n"
    )
    print("| scenario | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    rows = [
        (
            "small alone: first page / complete",
            lambda r: f"{med(r['small_alone'], 'first_s'):.2f} / {med(r['small_alone'], 'complete_s'):.2f} s",
        ),
        (
            "book alone: first page / complete",
            lambda r: f"{med(r['book_alone'], 'first_s'):.2f} / {med(r['book_alone'], 'complete_s'):.1f} s",
        ),
        (
            "shared, small (1.5 s after the book): first page after its upload",
            lambda r: f"**{med(r['shared'], 'small', 'first_s'):.2f} s**",
        ),
        (
            "shared, small: complete (× alone)",
            lambda r: (
                f"{med(r['shared'], 'small', 'complete_s'):.2f} s "
                f"({med(r['shared'], 'small', 'complete_s') / med(r['small_alone'], 'complete_s'):.2f}×)"
            ),
        ),
        (
            "shared, book: complete (× alone)",
            lambda r: (
                f"{med(r['shared'], 'book', 'complete_s'):.1f} s "
                f"({med(r['shared'], 'book', 'complete_s') / med(r['book_alone'], 'complete_s'):.2f}×)"
            ),
        ),
        (
            "2-page PDF alone / after another user's 40 sharper pages: complete",
            lambda r: (
                f"{med(r['sharper'], 'two_alone', 'complete_s'):.2f} / "
                f"{med(r['sharper'], 'two_shared', 'complete_s'):.2f} s "
                f"({med(r['sharper'], 'hd_done_when_two_completed'):.0f} of 40 rendered by then)"
            ),
        ),
        (
            "20 users at once: upload → first page p50 / p99 / max",
            lambda r: (
                f"{med(r['twenty'], 'first_p50_s'):.2f} / **{med(r['twenty'], 'first_p99_s'):.2f}** / "
                f"{med(r['twenty'], 'first_max_s'):.2f} s"
            ),
        ),
        ("20 users at once: last complete", lambda r: f"{med(r['twenty'], 'complete_max_s'):.2f} s"),
    ]
    for title, cell in rows:
        print(f"| {title} | " + " | ".join(cell(result["results"][label]) for label in labels) + " |")


if __name__ == "__main__":
    main()
