"""Web RSS while many clients upload big files at once (uploads stream to storage: none may
be held whole in the web process).

    .venv/bin/python bench/upload_rss.py [--clients 10] [--mb 45] [--root DIR]

Starts a throwaway Redis and one real gunicorn (gunicorn.conf.py, gevent, one worker, no RQ worker:
only the web side is measured), creates a user with a token, then N threads each POST a file of
`--mb` MB to /api/documents at the same moment while the gunicorn worker's RSS is sampled every
20 ms with psutil. `--root` serves another checkout of livedoc (e.g. an older commit, unpacked with
`git archive`) with this venv, for a before/after comparison. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "scripts"))
sys.path.insert(0, str(HERE))

import devredis  # noqa: E402

from tests.live import wait_http  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--mb", type=int, default=45)
    parser.add_argument("--root", type=Path, default=HERE)
    args = parser.parse_args()
    root = args.root.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="upload-rss-"))
    redis_port, web_port = devredis.free_port(), devredis.free_port()
    redis = devredis.start(redis_port, tmp / "redis")
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DATABASE_URL": f"sqlite:///{tmp / 'livedoc.db'}",
        "STORAGE_DIR": str(tmp / "storage"),
        "SECRET_KEY": "bench",
        "RATELIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "MAX_CONVERSIONS_PER_USER": "1000",
        "QUOTA_MB": "100000",
    }
    web = None
    try:
        flask = [str(BIN / "flask"), "--app", "app"]
        subprocess.run(
            [*flask, "users", "create", "bench", "--password", "bench-password-1"],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
        token = subprocess.run(
            [*flask, "users", "token", "bench"], cwd=root, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        web = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "1",
                "--no-control-socket",
                "wsgi:app",
            ],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{web_port}"
        wait_http(f"{base}/login")
        worker = psutil.Process(web.pid).children()[0]
        body = b"x" * (args.mb * 1024 * 1024 - 1) + b"\n"
        requests.get(f"{base}/api/documents", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        time.sleep(0.5)
        baseline = worker.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, worker.memory_info().rss)
                time.sleep(0.02)

        statuses: list[int] = []
        start = threading.Barrier(args.clients)

        def upload(i: int) -> None:
            start.wait()
            resp = requests.post(
                f"{base}/api/documents",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": (f"big-{i}.txt", body)},
                timeout=300,
            )
            statuses.append(resp.status_code)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        threads = [threading.Thread(target=upload, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - started
        time.sleep(0.3)
        done.set()
        sampler.join()
        mb = 1024 * 1024
        print(
            json.dumps(
                {
                    "root": str(root),
                    "clients": args.clients,
                    "upload_mb": args.mb,
                    "statuses": sorted(statuses),
                    "seconds": round(seconds, 1),
                    "rss_baseline_mb": round(baseline / mb, 1),
                    "rss_peak_mb": round(peak / mb, 1),
                    "rss_growth_mb": round((peak - baseline) / mb, 1),
                }
            )
        )
    finally:
        if web is not None:
            web.terminate()
            web.wait(20)
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main()
