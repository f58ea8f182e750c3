"""Real conversion bursts: viewers watching real PDFs that real workers convert at the same time.

    .venv/bin/python bench/burst.py                       # 4 PDFs x 36 pages, 200 SSE viewers
    .venv/bin/python bench/burst.py --transport ws --viewers 200 --docs 4

A throwaway Redis, one livedoc web worker (gunicorn gevent, as bench/run.py starts it) and --docs
conversion workers (`scripts/worker --burst`, one job each). The PDFs are uploaded with no worker
running, so their jobs wait in the queue; the viewers (viewers/docs on each document; single-document
SSE, or WebSockets subscribed to one document) connect and get the queued state; then every worker
starts at once and the viewers watch the conversions: every progress save (each stored page raises
`ready`, plus the stage saves) is one event per viewer. Measured: save -> viewer receipt over every
event (the `updated_at` in the event is the worker's save time, same clock), and that every viewer
ends on `complete` with the document's final seq. The PDF is /usr/share/doc/libtasn1-doc/libtasn1.pdf
(36 pages) when present, else a 36-page PDF made by tests/pdfgen.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

from config import Settings  # noqa: E402  (run puts the project root on sys.path)

SYSTEM_PDF = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")


def the_pdf(work: Path, pages: int) -> tuple[bytes, str]:
    if SYSTEM_PDF.exists():
        return SYSTEM_PDF.read_bytes(), str(SYSTEM_PDF)
    sys.path.insert(0, str(run.ROOT / "tests"))
    import pdfgen

    path = work / "generated.pdf"
    path.write_bytes(pdfgen.make_pdf([f"Page {n} of the burst document." for n in range(1, pages + 1)]))
    return path.read_bytes(), f"tests/pdfgen.py, {pages} pages"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--transport", choices=["sse", "ws"], default="sse")
    parser.add_argument("--pages", type=int, default=36, help="pages of the generated PDF (no system PDF)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="WORKER_NICE of the conversion workers (0: not lowered; default: the setting's)",
    )
    parser.add_argument("--json", default=str(run.BENCH / "results" / "burst.json"))
    args = parser.parse_args()
    import requests

    run.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="livedoc-burst-"))
    bench = run.Bench(work, set())
    workers: list[subprocess.Popen] = []
    server = None
    client = None
    try:
        port = run.devredis.free_port()
        bench.redis_proc = run.devredis.start(port, work / "redis", work / "redis.log")
        bench.redis_url = f"redis://127.0.0.1:{port}/0"
        env = {
            **os.environ,
            "REDIS_URL": bench.redis_url,
            "DATABASE_URL": f"sqlite:///{work / 'livedoc.db'}",
            "STORAGE_DIR": str(work / "storage"),
            "SECRET_KEY": "bench-secret",
            "SSE_POLL_INTERVAL": str(run.POLL_MS),
            "SSE_PING_INTERVAL": str(run.PING_MS),
            "RATELIMIT_STREAM": "100000 per minute",
            "RATELIMIT_UPLOAD": "100000 per minute",
            "MAX_STREAMS_PER_USER": "100000",
            "MAX_CONVERSIONS_PER_USER": "100000",
            "WEB_CONCURRENCY": "1",
            "WORKER_CONNECTIONS": "11000",
            "WEBSOCKET_ENABLED": "true" if args.transport == "ws" else "false",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **({} if args.worker_nice is None else {"WORKER_NICE": str(args.worker_nice)}),
            "PATH": f"{run.BIN}:{os.environ.get('PATH', '')}",
        }
        bench.base_env = env

        def flask(*cli: str) -> str:
            out = subprocess.run(
                [str(run.BIN / "flask"), "--app", "app", *cli],
                cwd=run.ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode:
                raise RuntimeError(out.stderr)
            return out.stdout

        flask("db", "upgrade")
        flask("users", "create", "bench", "--password", "bench-password-long")
        token = flask("users", "token", "bench").split()[-1]
        sc = run.Scenario("burst", "livedoc", args.viewers, transport=args.transport)
        server = bench.start_server(sc)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        pdf, pdf_source = the_pdf(work, args.pages)
        ids = []
        for i in range(args.docs):
            resp = session.post(
                f"{bench.url}/api/documents", files={"file": (f"burst-{i}.pdf", pdf, "application/pdf")}
            )
            resp.raise_for_status()
            ids.append(resp.json()["id"])
        per_doc = [ids[v % len(ids)] for v in range(args.viewers)]
        if args.transport == "ws":
            paths, subscribe, kind = ["/api/ws"] * args.viewers, [[d] for d in per_doc], "ws"
        else:
            paths, subscribe, kind = [f"/api/documents/{d}/events" for d in per_doc], None, "sse"
        client = run.LoadClient(
            bench.port,
            paths,
            {"Authorization": f"Bearer {token}"},
            work / "client.json",
            wait_headers=True,
            kind=kind,
            subscribe=subscribe,
        )
        ramped = client.expect("RAMPED", 240)
        run.log(f"{args.viewers} viewers open on {args.docs} queued documents: {ramped}")
        cpu0 = server.worker.cpu_times()
        t0 = time.time()
        for i in range(args.docs):
            workers.append(
                subprocess.Popen(
                    [
                        "bash",
                        str(run.ROOT / "scripts" / "worker"),
                        "--burst",
                        "-n",
                        f"burst-{os.getpid()}-{i}",
                    ],
                    cwd=run.ROOT,
                    env=env,
                    stdout=open(work / f"worker-{i}.log", "wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        final: dict[str, dict] = {}
        deadline = time.monotonic() + args.timeout
        while len(final) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
            for d in ids:
                if d not in final:
                    body = session.get(f"{bench.url}/api/documents/{d}/status", timeout=10).json()
                    if body.get("state") in ("complete", "failed"):
                        final[d] = body
        t1 = time.time()
        time.sleep(2)  # the last events reach the viewers
        cpu1 = server.worker.cpu_times()
        client.send("STATUS")
        status = client.expect("STATUS", 30)
        result = client.finish()
        client = None
        lat = [(recv - ua) * 1000 for ua, recv in result["events"] if ua >= t0 - 0.001]
        finals_by_doc: Counter = Counter()
        right = 0
        for key, state, seq in result["finals"]:
            doc = key.split(":", 1)[1].rsplit("/", 2)[-2] if "/" in key else key.split(":", 1)[1]
            finals_by_doc[doc] += 1
            if state == "complete" and final.get(doc, {}).get("seq") == seq:
                right += 1
        summary = {
            "pdf": pdf_source,
            "docs": args.docs,
            "worker_nice": Settings.from_env(env).WORKER_NICE,
            "viewers": args.viewers,
            "transport": args.transport,
            "conversion_s": round(t1 - t0, 1),
            "final_states": {
                d: [b.get("state"), b.get("seq"), b.get("ready"), b.get("pages")] for d, b in final.items()
            },
            "events": len(lat),
            "saves_seen_per_doc": round(len(lat) / max(1, args.viewers), 1),
            "lat_p50_ms": run.pct(lat, 50),
            "lat_p99_ms": run.pct(lat, 99),
            "lat_max_ms": max(lat) if lat else None,
            "viewers_ending_complete_with_final_seq": right,
            "web_worker_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 2),
            "failed": result["failed"],
            "dropped": result["dropped"],
            "open_at_end": status["open"],
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
        ok = right == args.viewers and len(final) == len(ids)
        p99 = summary["lat_p99_ms"]
        summary["verdict"] = "met" if ok and p99 is not None and p99 <= 100 else "MISSED"
        print(json.dumps(summary, indent=1))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
    finally:
        if client is not None:
            client.kill()
        for w in workers:
            if w.poll() is None:
                w.terminate()
                try:
                    w.wait(15)
                except subprocess.TimeoutExpired:
                    w.kill()
        if server is not None:
            server.stop()
        bench.close()
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
