"""`scripts/run` keeps its Redis on disk: Ctrl-C mid-conversion, start it again, and the document
being converted and the one queued behind it both complete, from the jobs Redis kept.

The real script runs in a copy of the working tree (its own var/ and instance/, the same .venv), as
a developer runs it, on a free port; Ctrl-C is SIGINT to its process group, as a terminal sends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import devredis
import psutil
import pytest

from config import Settings
from livedoc import progress
from livedoc.redis_client import connect
from tests.live import api, wait_http
from tests.pdfgen import make_pdf
from tests.support import TRANSIENT, wait_for
from tests.support.streams import status_of, upload
from tests.support.worktree import copy_worktree

# Two starts of a whole deployment and a conversion in between.
pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]

PAGES = 40  # at 300 dpi on one render process: still converting when Ctrl-C comes


class Run:
    """One `scripts/run` of a directory, in its own process group, logging to a file."""

    def __init__(self, root: Path, env: dict, log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["bash", str(root / "scripts" / "run")],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        """What the script printed so far."""
        return self.log.read_text(errors="replace")

    def wait_running(self) -> str:
        """Wait for the banner; returns the URL of the Redis it started."""
        wait_for(
            lambda: self.proc.poll() is not None or "livedoc is running" in self.text(),
            120,
            0.2,
            what="scripts/run up",
        )
        assert self.proc.poll() is None, self.text()
        return re.search(r"==> redis on (redis://\S+)", self.text()).group(1)

    def ctrl_c(self) -> None:
        """Ctrl-C as a terminal sends it (SIGINT to the foreground group); waits for the script."""
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(30)

    def kill(self) -> None:
        """SIGKILL whatever is left, Redis too (it runs in a session of its own)."""
        if self.proc.poll() is not None:
            return
        left = psutil.Process(self.proc.pid).children(recursive=True)
        os.killpg(self.proc.pid, signal.SIGKILL)
        for child in left:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self.proc.wait(10)


def test_ctrl_c_mid_conversion_and_a_new_start_complete_every_document(tmp_path):
    root = copy_worktree(tmp_path / "livedoc")
    port = devredis.free_port()
    env = {k: v for k, v in os.environ.items() if k not in {f.name for f in dataclasses.fields(Settings)}}
    env.update(BIND=f"127.0.0.1:{port}", RENDER_DPI="300", RENDER_PROCESSES="1")
    env["PATH"] = f"{root / '.venv' / 'bin'}:{env['PATH']}"
    base = f"http://127.0.0.1:{port}"
    runs = [Run(root, env, tmp_path / "run1.log")]
    try:
        redis_url = runs[0].wait_running()
        wait_http(f"{base}/login")
        token = subprocess.run(
            [str(root / ".venv" / "bin" / "flask"), "--app", "app", "users", "token", "demo"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        s = api(token)
        pdf = make_pdf([f"Page {i} of a long document\n" + "text " * 40 for i in range(1, PAGES + 1)])
        converting = upload(s, base, pdf, "long.pdf")
        job_id = f"doc-{converting['id']}-1"
        conn = connect(redis_url)
        wait_for(
            lambda: (p := progress.read(conn, job_id)) and p["stage"] == "rendering" and p["page"] >= 3,
            60,
            what="page 3 rendering",
        )
        queued = upload(s, base, make_pdf(["one", "two"]), "short.pdf")
        assert status_of(s, base, queued)["state"] == "queued"
        conn.connection_pool.disconnect()

        runs[0].ctrl_c()
        assert f"handing job {job_id} back" in (root / "var" / "log" / "worker.log").read_text()

        runs.append(Run(root, env, tmp_path / "run2.log"))
        redis_url = runs[1].wait_running()
        restarted = time.monotonic()
        conn = connect(redis_url)
        kept = progress.read(conn, job_id)
        conn.connection_pool.disconnect()
        # The job itself came back with Redis (not queued again from the database after a grace).
        assert kept is not None, "Redis came back without the conversion's job"
        for body in (converting, queued):
            final = wait_for(
                lambda b=body: (st := status_of(s, base, b))["state"] in progress.TERMINAL and st,
                90,
                0.25,
                what=f"{body['id']} finished",
                ignore=TRANSIENT,
            )
            assert final["state"] == "complete", final
        took = time.monotonic() - restarted
        assert status_of(s, base, converting)["pages"] == PAGES
        print(f"scripts/run restarted: both documents complete {took:.1f} s after the new start")
        runs[1].ctrl_c()
    finally:
        for run in runs:
            run.kill()
