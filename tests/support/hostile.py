"""Conversions in a child process of their own (tests/hostile_child.py), so the time and the peak RSS
measured are the conversion's alone: hostile uploads, text bounds, Office bombs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def convert_in_child(
    redis_url: str,
    storage: Path,
    kind: str,
    sources: list[Path],
    job_timeout: int = 120,
    timeout: float = 300,
    **settings: str,
) -> dict:
    """Convert `sources` of `kind` with a real RQ worker in a child; its JSON report of the last one
    (state, error, seconds, peak RSS, ...)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": redis_url,
        "STORAGE_DIR": str(storage),
        "JOB_RETRY_INTERVALS": "0,0,0",
        "JOB_TIMEOUT": str(job_timeout),
        **settings,
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hostile_child.py"), redis_url, str(storage), kind]
        + [str(s) for s in sources],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
