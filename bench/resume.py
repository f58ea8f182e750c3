"""Resume after a killed work horse: how many stored pages are rendered again, and what it costs.

    .venv/bin/python bench/resume.py                 # 400 generated pages, whole and in page ranges
    .venv/bin/python bench/resume.py --pages 1221 --runs 1

Loopback only: a throwaway Redis, one gunicorn (gevent) and two `scripts/worker` processes, started
and stopped here. For each mode (one work horse renders every page; page-range jobs share the
document), a solo conversion is timed, then the same document again with the document job's work
horse SIGKILLed once a third of its pages are ready (as a crash or the OOM killer would). The pages
stored whole at the kill are identified by their image file's inode: a page rendered again is a new
file. `ready` is polled every 20 ms from the kill on, to catch it going back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import devredis  # noqa: E402
from rq import Worker  # noqa: E402

from bench.first_page import generated  # noqa: E402
from livedoc.redis_client import connect  # noqa: E402
from livedoc.storage import page_names  # noqa: E402
from tests.live import Stack, api  # noqa: E402
from tests.support.procs import work_horses  # noqa: E402


def whole_pages(out: Path) -> dict[int, int]:
    """Page number -> its image's inode, for pages whose four files are stored."""
    pages = {}
    for layer in out.glob("layer-*.json"):
        n = int(layer.stem.split("-")[1])
        paths = [out / name for name in page_names(n).values()]
        try:
            inode = paths[0].stat().st_ino
        except FileNotFoundError:
            continue
        if all(p.exists() for p in paths):
            pages[n] = inode
    return pages


def convert(stack: Stack, token: str, data: bytes, kill_at: float | None) -> dict:
    """One upload to complete; with kill_at, the document job's horse is killed at that share ready."""
    s = api(token)
    base = stack.base_url
    conn = connect(stack.redis_url)
    started = time.perf_counter()
    files = {"file": ("b.pdf", data, "application/pdf")}
    body = s.post(f"{base}/api/documents", files=files, timeout=120).json()
    job_id = f"doc-{body['id']}-1"
    before: dict[int, int] = {}
    killed_at = None
    readies: list[int] = []
    while True:
        st = s.get(base + body["status_url"], timeout=30).json()
        readies.append(st.get("ready", 0))
        due = kill_at is not None and killed_at is None and st.get("pages")
        if due and st["ready"] >= st["pages"] * kill_at:
            for worker in Worker.all(connection=conn):
                if worker.get_current_job_id() == job_id:
                    proc = next(p for p in stack.workers if p.popen.pid == worker.pid)
                    before = whole_pages(stack.dir / "storage" / body["id"] / "a1")
                    for horse in work_horses(proc.popen.pid):
                        os.killpg(horse, signal.SIGKILL)
                    killed_at = st["ready"]
                    break
        if st["state"] in ("complete", "failed"):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    conn.connection_pool.disconnect()
    if st["state"] != "complete":
        raise RuntimeError(f"failed: {st}")
    after = whole_pages(stack.dir / "storage" / body["id"] / f"a{st['attempt']}")
    redone = sum(1 for n, inode in before.items() if after.get(n) != inode)
    drops = sum(1 for a, b in zip(readies, readies[1:]) if b < a)
    s.delete(f"{base}/api/documents/{body['id']}", timeout=30)
    return {
        "complete_s": round(elapsed, 2),
        "attempts": st["attempt"],
        "ready_at_kill": killed_at,
        "stored_at_kill": len(before),
        "rendered_twice": redone,
        "renders": st["pages"] + redone,
        "ready_went_back": drops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "resume.json")
    args = parser.parse_args()
    data = generated(args.pages)
    rows = []
    for mode, chunk in (("one work horse", "0"), ("page ranges (CHUNK_PAGES=50)", "50")):
        work = Path(tempfile.mkdtemp(prefix="livedoc-resume-"))
        port = devredis.free_port()
        redis = devredis.start(port, work / "redis", work / "redis.log")
        stack = Stack(
            f"redis://127.0.0.1:{port}/0",
            work / "stack",
            CHUNK_PAGES=chunk,
            JOB_RETRY_INTERVALS="1",
            RATELIMIT_STREAM="100000 per minute",
            RATELIMIT_UPLOAD="1000 per minute",
            LOG_LEVEL="WARNING",
        )
        try:
            stack.start_web()
            stack.start_worker("--with-scheduler")
            stack.start_worker()
            token = stack.user("bench")
            time.sleep(2)
            for _ in range(args.runs):
                solo = convert(stack, token, data, None)
                killed = convert(stack, token, data, 1 / 3)
                rows.append({"mode": mode, "solo_s": solo["complete_s"], **killed})
        finally:
            stack.stop()
            redis.terminate()
            redis.wait(10)
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "pages": args.pages,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{args.pages} generated pages, two workers; the document job's horse SIGKILLed at 1/3 ready")
    print(
        "| mode | solo | with a kill | pages stored at the kill | rendered twice | renders "
        "| ready went back |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['solo_s']} s | {r['complete_s']} s | {r['stored_at_kill']} | "
            f"{r['rendered_twice']} | {r['renders']} | {r['ready_went_back']} times |"
        )


if __name__ == "__main__":
    main()
