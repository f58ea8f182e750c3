"""Real processes for tests: gunicorn with gevent workers and `rq worker`, on a shared Redis."""

from __future__ import annotations

import os
import re
import signal as signals
import subprocess
import sys
import time
from pathlib import Path

import devredis
import requests

from tests import dbs

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def password_for(name: str) -> str:
    """The password Stack.user gives a user (the CLI refuses passwords under 12 characters)."""
    return f"pw-{name}-long-enough"


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until the URL answers at all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class Proc:
    """A child process whose output goes to a log file, stopped (and reaped) on demand."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_dir: Path, cwd: Path = ROOT):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        # The child writes to its own copy of the descriptor; this process's copy is closed at once.
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def send(self, sig: int) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 15) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signals.SIGKILL)
            self.popen.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Stack:
    """One livedoc deployment: N gunicorn servers and M workers sharing a Redis, a database and files."""

    def __init__(self, redis_url: str, work_dir: Path, **settings: str):
        self.redis_url = redis_url
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "STORAGE_DIR": str(work_dir / "storage"),
            "SECRET_KEY": "live-test-secret",
            "SSE_POLL_INTERVAL": "500",
            "SSE_PING_INTERVAL": "1000",
            "SSE_RETRY": "500",
            "JOB_RETRY_INTERVALS": "1,1,1",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "MAX_CONVERSIONS_PER_USER": "10000",  # live suites queue many documents per user at once
            "QUOTA_DOCUMENTS": "100000",
            **settings,
        }
        # Migrated, as production's is (`flask db upgrade`), unless the test brings its own.
        self.env.setdefault("DATABASE_URL", dbs.fresh(work_dir))
        self.webs: list[Proc] = []
        self.workers: list[Proc] = []
        self.ports: list[int] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def start_web(self, port: int | None = None, workers: int = 1, cwd: Path = ROOT, **env: str) -> Proc:
        """Start gunicorn (in cwd, with env on top of the stack's: a host of its own)."""
        port = port or devredis.free_port()
        cmd = [
            str(BIN / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "--pythonpath",
            str(ROOT),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--no-control-socket",
            "wsgi:app",
        ]
        proc = Proc(f"web-{port}", cmd, {**self.env, **env}, self.dir, cwd).start()
        self.webs.append(proc)
        if port not in self.ports:
            self.ports.append(port)
        wait_http(f"http://127.0.0.1:{port}/login")
        return proc

    def start_worker(self, *options: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Proc:
        """Start a worker the way production does (scripts/worker), with extra rq options."""
        n = len(self.workers)
        name = f"test-worker-{os.getpid()}-{n}-{time.monotonic_ns()}"
        cmd = ["bash", str(ROOT / "scripts" / "worker"), "-n", name, *options]
        env = {**self.env, **(env or {}), "PATH": f"{BIN}:{self.env.get('PATH', '')}"}
        proc = Proc(f"worker-{n}", cmd, env, self.dir, cwd).start()
        self.workers.append(proc)
        return proc

    def start_stock_worker(self, *options: str, name: str = "stock") -> Proc:
        """Start a worker exactly as RQ's docs say (`rq worker --with-scheduler -u URL livedoc`)."""
        n = len(self.workers)
        cmd = [
            str(BIN / "rq"),
            "worker",
            "--with-scheduler",
            "-u",
            self.redis_url,
            "-n",
            f"{name}-{os.getpid()}-{n}-{time.monotonic_ns()}",
            *options,
            "livedoc",
        ]
        proc = Proc(f"{name}-worker-{n}", cmd, self.env, self.dir).start()
        self.workers.append(proc)
        return proc

    def flask(self, *args: str) -> str:
        """Run the Flask CLI against this deployment and return its output."""
        out = subprocess.run(
            [str(BIN / "flask"), "--app", "app", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed: {out.stderr}")
        return out.stdout.strip()

    def user(self, name: str, admin: bool = False) -> str:
        """Create a user through the CLI and return a fresh API token."""
        self.flask("users", "create", name, "--password", password_for(name), *(["--admin"] if admin else []))
        return self.flask("users", "token", name)

    def stop(self) -> None:
        for proc in self.webs + self.workers:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.log()[-4000:]}" for p in self.webs + self.workers)


def api(token: str) -> requests.Session:
    """A requests session that authenticates with an API token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def sse_events(resp: requests.Response, until_terminal: bool = True, limit: int = 10000):
    """Parse an SSE response into (fields) dicts, one per message or comment, as they arrive."""
    buf: dict = {}
    count = 0
    for raw in resp.iter_lines(decode_unicode=True, chunk_size=1):
        line = raw if raw is not None else ""
        if line == "":
            if buf:
                yield buf
                count += 1
                if (until_terminal and buf.get("event") in ("complete", "error")) or count >= limit:
                    return
                buf = {}
            continue
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data" and "data" in buf:
            buf["data"] += "\n" + value
        else:
            buf[name] = value


class MotoServer:
    """moto's standalone S3 server as its own process: the real S3 HTTP API on a free port."""

    ACCESS = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self, log_dir: Path):
        self.port = devredis.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = Proc(f"moto-{self.port}", cmd, {**os.environ, **self.ACCESS}, log_dir)

    def start(self) -> MotoServer:
        self.proc.start()
        wait_http(self.url + "/moto-api/", timeout=30)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def client(self):
        """A boto3 client of this server (for the tests' own checks)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "docs") -> dict[str, str]:
        """The environment that points livedoc at a bucket of this server."""
        return {"STORAGE_URL": f"s3://{bucket}/{prefix}", "S3_ENDPOINT_URL": self.url, **self.ACCESS}

    def requests(self) -> list[str]:
        """Every S3 request the server has answered so far ("GET /bucket/key"), from its log."""
        return re.findall(r'"((?:GET|PUT|POST|HEAD|DELETE) [^ ]+) HTTP/1\.[01]" \d{3}', self.proc.log())
