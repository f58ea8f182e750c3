"""Stopping: a worker told to stop (SIGTERM, Ctrl-C) hands its job back and exits at once; another
worker converts the document; the viewer's stream ends `complete`."""

from __future__ import annotations

import json
import signal
import time

import devredis
import pytest

from livedoc import fleet, progress
from livedoc.redis_client import connect
from tests.live import api, sse_events
from tests.pdfgen import make_pdf

# scripts/run brings a whole deployment up and down (up to 120 s to start).
pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]

PAGES = 200  # at 300 dpi on one render process: the first worker is still converting when stopped
SLOW_PDF = make_pdf([f"Page {i} of a long document\n" + "text " * 40 for i in range(1, PAGES + 1)])


def _rendering(conn, job_id: str, page: int) -> bool:
    prog = progress.read(conn, job_id)
    return bool(prog) and prog["stage"] == "rendering" and prog["page"] >= page


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_stopped_worker_hands_its_job_to_another_which_finishes_it(make_stack, sig):
    # Every save its own event (no coalescing): the stream must show the hand-back itself.
    stack = make_stack(RENDER_DPI="300", RENDER_PROCESSES="1", SSE_COALESCE_MS="0")
    conn = connect(stack.redis_url)
    s = api(stack.user("stopper"))
    doc = s.post(
        f"{stack.base_url}/api/documents",
        files={"file": ("slow.pdf", SLOW_PDF, "application/pdf")},
        timeout=10,
    ).json()
    job_id = f"doc-{doc['id']}-1"
    stream = s.get(
        stack.base_url + doc["events_url"], headers={"Accept": "text/event-stream"}, stream=True, timeout=120
    )
    first = stack.start_worker()
    deadline = time.monotonic() + 60
    while not _rendering(conn, job_id, 3):
        assert time.monotonic() < deadline, "the first worker never reached page 3"
        time.sleep(0.1)
    second = stack.start_worker()
    deadline = time.monotonic() + 20
    while fleet.workers_alive(conn, "livedoc") != 2:
        assert time.monotonic() < deadline, "the second worker never registered"
        time.sleep(0.1)

    stopped_at = time.monotonic()
    first.send(sig)
    first.popen.wait(10)
    took = time.monotonic() - stopped_at
    assert first.popen.returncode == 0
    assert took < 5, f"the worker took {took:.1f} s to stop"

    events = [json.loads(m["data"]) for m in sse_events(stream) if "data" in m]
    assert events[-1]["state"] == "complete" and events[-1]["pages"] == PAGES
    requeued = [e for e in events if e["stage"] == "requeued"]
    assert [e["state"] for e in requeued] == ["queued"]
    assert requeued[0]["attempt"] == 1 and events[-1]["attempt"] == 2
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    # Handed back, not failed: no retry was used up, and the second worker did the conversion.
    deadline = time.monotonic() + 10
    while conn.hget(progress.job_key(job_id), "status") != b"finished":  # RQ records it after the job
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert conn.hmget(progress.job_key(job_id), "status", "retries_left") == [b"finished", b"3"]
    assert f"handing job {job_id} back to the queue" in first.log()
    assert job_id in second.log()
    second.stop()
    conn.connection_pool.disconnect()


def test_ctrl_c_in_scripts_run_mid_conversion_stops_everything_within_10_s(tmp_path):
    import os
    import subprocess

    import psutil

    from tests.dbs import FLASK, fresh
    from tests.live import wait_http
    from tests.support.worktree import copy_worktree

    # A copy: scripts/run keeps its Redis on disk (var/), and a queued job left there would be
    # converted by the developer's next scripts/run.
    ROOT = copy_worktree(tmp_path / "tree")
    port = devredis.free_port()
    env = {
        **os.environ,
        "BIND": f"127.0.0.1:{port}",
        "RENDER_DPI": "300",
        "DATABASE_URL": fresh(tmp_path),
        "STORAGE_DIR": str(tmp_path / "storage"),
        "PATH": f"{FLASK.parent}:{os.environ['PATH']}",
    }
    env.pop("REDIS_URL", None)
    log = open(tmp_path / "run.log", "wb")
    # Its own process group, as a shell gives a foreground job: Ctrl-C is SIGINT to that group.
    run = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "run")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while b"livedoc is running" not in (tmp_path / "run.log").read_bytes():
            assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        wait_http(f"{base}/login")
        token = (
            subprocess.run(
                [str(FLASK), "--app", "app", "users", "token", "demo"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        s = api(token)
        doc = s.post(
            f"{base}/api/documents", files={"file": ("slow.pdf", SLOW_PDF, "application/pdf")}, timeout=10
        ).json()
        deadline = time.monotonic() + 60
        while not (st := s.get(base + doc["status_url"], timeout=5).json())["stage"] == "rendering":
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        started = psutil.Process(run.pid).children(recursive=True)
        assert len(started) >= 4  # Redis, the worker (and its horse), gunicorn and its worker

        t0 = time.monotonic()
        os.killpg(run.pid, signal.SIGINT)
        run.wait(30)
        script_done = time.monotonic() - t0
        gone, alive = psutil.wait_procs(started, timeout=max(0.1, 10 - script_done))
        took = time.monotonic() - t0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
        log.close()
    assert alive == [], f"still running {took:.1f} s after Ctrl-C: {[p.pid for p in alive]}"
    assert script_done < 10, f"scripts/run took {script_done:.1f} s"
    print(
        f"Ctrl-C mid-conversion: scripts/run exited after {script_done:.2f} s, every process gone after "
        f"{took:.2f} s"
    )
