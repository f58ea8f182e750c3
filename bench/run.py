"""livedoc streaming benchmark: livedoc (single-document SSE with push on/off, multiplexed SSE, WebSocket)
vs Flask-SSE 1.0.0 vs naive per-stream polling.

    .venv/bin/python bench/run.py --scenarios quick      # ~8 min: 100 and 1,000 connections
    .venv/bin/python bench/run.py --scenarios full       # ~25 min: adds 5,000, pings, ratios

Loopback only and bounded: a throwaway Redis, one gunicorn gevent worker per scenario (restarted for
every scenario, so memory numbers start clean), one gevent load-client process, and a driver in this
process that saves progress through the real contract (livedoc.progress.ProgressWriter). See
bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import devredis  # noqa: E402

# Settings shared by every system under test.
GEVENT_ARGS = ["-k", "gevent", "--worker-connections", "11000", "-w", "1", "--no-control-socket"]
POLL_MS = 2000
PING_MS = 30000
MAIN_JOBS = 100  # documents the 100 / 1,000 / 5,000-stream scenarios spread their streams over
RATIO_JOBS = 10  # documents of the "10 vs 1,000 streams on 10 jobs" scenarios
MAIN_RATE = 20.0  # progress saves per second (all jobs together) in the driven phase
RATIO_RATE = 10.0
DRIVE_S = 12.0
IDLE_S = 10.0
PROBES = 50
CONCURRENCY = 50  # connects in flight while the client ramps up
DOCS_PER_CONN = 10  # documents one multiplexed SSE stream / one WebSocket watches (a page showing K)

TARGETS = {
    "streams_5000_errors": "5,000 concurrent streams on one gevent worker with 0 errors",
    "rss_per_100": "RSS growth <= 2 MB per 100 streams",
    "p99_push": "save->client p99 <= 100 ms with push",
    "p99_nopush": f"save->client p99 <= SSE_POLL_INTERVAL + 100 ms = {POLL_MS + 100} ms without push",
    "redis_ratio": "Redis cmds/s, 1,000 streams on 10 jobs <= 1.2x 10 streams on 10 jobs",
    "connect_p99": "connect p99 <= 50 ms with 1,000 streams open",
    "idle_cpu": "idle worker CPU with 1,000 streams < 2% of a core",
    # Streams at the floor: memory per connection against the naive poller, one worker's ceiling, fan-out.
    "mem_vs_naive": "MB/100 conns vs the naive poller, same N, same run: SSE <= 1.0x, multi <= 1.2x, "
    "WS <= 1.5x",
    "conns_10000": "10,000 connections on one worker: 0 errors, p99 <= 50 ms at 1,000 events/s, "
    "idle CPU < 2%",
    "fanout_5000": "5,000 connections x 10 documents at ~10,000 events/s: p99 <= 100 ms",
}
MEM_LIMITS = {"livedoc push": 1.0, "livedoc multi": 1.2, "livedoc ws": 1.5}
# Everything from this line on in BENCHMARKS.md is hand-written and kept when the report is rewritten.
ANALYSIS_MARKER = "<!-- analysis: hand-written, kept by bench/run.py -->"
SEED_CLAIMS = "connect < 100 ms, update < 500 ms, < 10 MB per 100 connections, < 5% CPU"


@dataclass
class Scenario:
    name: str
    system: str  # livedoc | naive | flask-sse
    streams: int  # connections
    jobs: str = "main"  # main (100 jobs) | ratio (10 jobs)
    push: bool = True  # livedoc only
    ping_ms: int = PING_MS
    idle: bool = True  # measure idle CPU and idle Redis traffic
    transport: str = "sse"  # livedoc only: sse (one document) | multi (/api/events?docs=) | ws (/api/ws)
    docs: int = 1  # documents each connection watches (multi, ws)
    saves_per_s: float | None = None  # the driven rate when not the suite's (the 10,000 rows)

    @property
    def rate(self) -> float:
        if self.saves_per_s is not None:
            return self.saves_per_s
        return MAIN_RATE if self.jobs == "main" else RATIO_RATE


def suite(name: str) -> list[Scenario]:
    out: list[Scenario] = []
    sizes = [100, 1000] if name == "quick" else [100, 1000, 5000]
    if name == "floor":
        return floor_suite()
    for n in sizes:
        out.append(Scenario(f"livedoc push {n}", "livedoc", n))
    for n in sizes:
        out.append(Scenario(f"livedoc nopush {n}", "livedoc", n, push=False))
    if name == "full":
        out.append(Scenario("livedoc push 1000 ping5s", "livedoc", 1000, ping_ms=5000))
    # 100 / 500 connections x 10 documents = the document watches of `livedoc push 1000 / 5000`
    # (the same pages served over one connection each); 1,000 / 5,000 = the same connection count.
    for transport in ("multi", "ws"):
        for n in sorted({*sizes, *([500] if name == "full" else [])}):
            out.append(
                Scenario(f"livedoc {transport} {n}", "livedoc", n, transport=transport, docs=DOCS_PER_CONN)
            )
    for n in sizes:
        out.append(Scenario(f"naive {n}", "naive", n))
    for n in sizes:
        out.append(Scenario(f"flask-sse {n}", "flask-sse", n))
    if name in ("full", "floor"):
        # 10,000 connections at 1,000 events/s: every job has 100 single-document watchers
        # (10 saves/s) or 1,000 multiplexed/WebSocket watchers (1 save/s).
        for transport, docs, rate in (
            ("sse", 1, 10.0),
            ("multi", DOCS_PER_CONN, 1.0),
            ("ws", DOCS_PER_CONN, 1.0),
        ):
            label = "push" if transport == "sse" else transport
            out.append(
                Scenario(
                    f"livedoc {label} 10000",
                    "livedoc",
                    10000,
                    transport=transport,
                    docs=docs,
                    saves_per_s=rate,
                )
            )
    ratio_systems = [("livedoc push", "livedoc", True)]
    if name == "full":
        ratio_systems += [
            ("livedoc nopush", "livedoc", False),
            ("naive", "naive", True),
            ("flask-sse", "flask-sse", True),
        ]
    for label, system, push in ratio_systems:
        for n in (10, 1000):
            out.append(Scenario(f"{label} {n}on10", system, n, jobs="ratio", push=push, idle=False))
    if name == "full":
        # Every connection watches all 10 jobs: 1,000 connections = 10,000 document watches.
        for transport in ("multi", "ws"):
            for n in (10, 1000):
                out.append(
                    Scenario(
                        f"livedoc {transport} {n}on10",
                        "livedoc",
                        n,
                        jobs="ratio",
                        idle=False,
                        transport=transport,
                        docs=RATIO_JOBS,
                    )
                )
    return out


def floor_suite() -> list[Scenario]:
    """The floor run, in one go: every transport and both peers at 1,000 and 5,000, heavy fan-out
    (multi/ws 5000 x 10 documents at ~10,000 events/s) and 10,000 per worker at 1,000 events/s."""
    full = {s.name: s for s in suite("full")}
    names = [
        "livedoc push 1000",
        "livedoc nopush 1000",
        "livedoc multi 1000",
        "livedoc ws 1000",
        "naive 1000",
        "flask-sse 1000",
        "livedoc push 5000",
        "livedoc multi 5000",
        "livedoc ws 5000",
        "naive 5000",
        "flask-sse 5000",
        "livedoc push 10000",
        "livedoc multi 10000",
        "livedoc ws 10000",
    ]
    return [full[n] for n in names]


# -- helpers ---------------------------------------------------------------------------------------
def raise_nofile() -> None:
    """5,000 streams need > 5,000 fds in the client and in the server: go to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_flask_sse() -> str:
    try:
        import flask_sse  # noqa: F401
    except ImportError:
        log("Flask-SSE is not installed: pip install flask-sse==1.0.0 (benchmark peer only)")
        subprocess.run([str(BIN / "pip"), "install", "-q", "flask-sse==1.0.0"], check=True)
    from importlib.metadata import version

    return version("flask-sse")


class Server:
    """One gunicorn master with one gevent worker; output to a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path):
        import psutil

        self.name = name
        self.log_path = log_path
        self.popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=open(log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=raise_nofile,
        )
        self.master = psutil.Process(self.popen.pid)
        self.worker = None

    def wait_ready(self, url: str, timeout: float = 30) -> None:
        import psutil
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(url, timeout=2).status_code < 500:
                    kids = self.master.children()
                    if len(kids) == 1:
                        self.worker = kids[0]
                        return
            except (requests.RequestException, psutil.Error):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)

    def error_lines(self) -> int:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return sum(
            1
            for line in text.splitlines()
            if "Traceback" in line or "[ERROR]" in line or " ERROR " in line or "CRITICAL" in line
        )


class LoadClient:
    """The gevent load-client process, driven line by line over its stdin/stdout."""

    def __init__(
        self,
        port: int,
        paths: list[str],
        headers: dict,
        out: Path,
        wait_headers: bool,
        kind: str = "sse",
        subscribe: list[list[str]] | None = None,
    ):
        targets = out.with_suffix(".targets.json")
        targets.write_text(
            json.dumps({"kind": kind, "paths": paths, "headers": headers, "subscribe": subscribe or []})
        )
        cmd = [
            sys.executable,
            str(BENCH / "loadclient.py"),
            "--port",
            str(port),
            "--targets",
            str(targets),
            "--out",
            str(out),
            "--concurrency",
            str(CONCURRENCY),
        ]
        if not wait_headers:
            cmd.append("--no-wait-headers")
        self.out = out
        self.popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(out.with_suffix(".stderr"), "wb"),
            text=True,
            preexec_fn=raise_nofile,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, word: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"load client: no {word} within {timeout} s") from None
            if line is None:
                err = self.out.with_suffix(".stderr").read_text()[-2000:]
                raise RuntimeError(f"load client exited before {word}: {err}")
            head, _, body = line.partition(" ")
            if head == word:
                return json.loads(body) if body else {}

    def send(self, cmd: str) -> None:
        self.popen.stdin.write(cmd + "\n")
        self.popen.stdin.flush()

    def finish(self) -> dict:
        self.send("STOP")
        self.expect("DONE", 60)
        self.popen.wait(30)
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def cmdstats(conn) -> Counter:
    return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in conn.info("commandstats").items()})


# -- the benchmark ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, work: Path, profile: set[str], profile_phase: str = "all"):
        self.work = work
        self.profile = profile
        self.profile_phase = profile_phase  # all | ramp | drive: which phase py-spy records
        self.livedoc_config = "gunicorn.conf.py"  # bench/memprofile.py swaps in its tracemalloc config
        self.peer_config: str | None = None  # ... and gives the peers the same one
        self.redis_proc = None
        self.results: list[dict] = []

    # setup: Redis, a livedoc deployment with one user and MAIN_JOBS + RATIO_JOBS queued documents
    def setup(self) -> None:
        import redis
        import requests
        from rq.job import Job

        from livedoc import jobs as ljobs
        from livedoc.progress import ProgressWriter

        port = devredis.free_port()
        self.redis_proc = devredis.start(port, self.work / "redis", self.work / "redis.log")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.raw = redis.Redis.from_url(self.redis_url)
        self.redis_version = self.raw.info("server")["redis_version"]
        self.base_env = {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": f"sqlite:///{self.work / 'livedoc.db'}",
            "STORAGE_DIR": str(self.work / "storage"),
            "SECRET_KEY": "bench-secret",
            "SSE_POLL_INTERVAL": str(POLL_MS),
            "SSE_PING_INTERVAL": str(PING_MS),
            # The app may rate-limit or cap stream connects; the benchmark opens thousands from one user.
            "RATELIMIT_STREAM": "100000 per minute",
            "RATELIMIT_UPLOAD": "100000 per minute",
            "MAX_STREAMS_PER_USER": "100000",
            # 110 documents stay queued on purpose (no worker): above the per-user quotas.
            "MAX_CONVERSIONS_PER_USER": "100000",
            "QUOTA_DOCUMENTS": "100000",
            "WEB_CONCURRENCY": "1",
            "WORKER_CONNECTIONS": "11000",  # 10,000 streams + the probes
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }

        def flask(*args: str) -> str:
            out = subprocess.run(
                [str(BIN / "flask"), "--app", "app", *args],
                cwd=ROOT,
                env=self.base_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode != 0:
                raise RuntimeError(f"flask {args} failed: {out.stderr}")
            return out.stdout.strip()

        flask("db", "upgrade")
        flask("users", "create", "bench", "--password", "bench-password-long")
        self.token = flask("users", "token", "bench").splitlines()[-1].strip()
        server = self.start_server(Scenario("setup", "livedoc", 0))
        try:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
            self.docs: dict[str, list[str]] = {"main": [], "ratio": []}
            for kind, count in (("main", MAIN_JOBS), ("ratio", RATIO_JOBS)):
                for i in range(count):
                    resp = session.post(
                        f"{self.url}/api/documents",
                        files={"file": (f"bench-{kind}-{i}.txt", b"bench document\n")},
                    )
                    if resp.status_code != 201:
                        raise RuntimeError(f"upload failed: {resp.status_code} {resp.text[:300]}")
                    self.docs[kind].append(resp.json()["id"])
        finally:
            server.stop()
        self.writers: dict[str, list] = {}
        for kind, ids in self.docs.items():
            self.writers[kind] = []
            for doc_id in ids:
                job = Job.fetch(ljobs.job_id(doc_id, 1), connection=self.raw, serializer=ljobs.SERIALIZER)
                self.writers[kind].append(ProgressWriter(job, self.raw))
        log(
            f"setup: redis {self.redis_version} on {self.redis_url}; {MAIN_JOBS}+{RATIO_JOBS} documents "
            f"queued (no worker)"
        )

    def start_server(self, sc: Scenario) -> Server:
        port = devredis.free_port()
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {**self.base_env, "SSE_PING_INTERVAL": str(sc.ping_ms)}
        bind = ["--bind", f"127.0.0.1:{port}"]
        if sc.system == "livedoc":
            env["REALTIME_PUSH"] = "true" if sc.push else "false"
            env["WEBSOCKET_ENABLED"] = "true" if sc.transport == "ws" else "false"
            cmd = [str(BIN / "gunicorn"), "-c", self.livedoc_config, *GEVENT_ARGS, *bind, "wsgi:app"]
            health = f"{self.url}/login"
        else:
            module = {"naive": "peer_naive", "flask-sse": "peer_flask_sse"}[sc.system]
            config = ["-c", self.peer_config] if self.peer_config else []
            cmd = [
                str(BIN / "gunicorn"),
                *config,
                *GEVENT_ARGS,
                *bind,
                "--pythonpath",
                str(BENCH),
                f"{module}:app",
            ]
            health = f"{self.url}/health"
        slug = sc.name.replace(" ", "_")
        server = Server(sc.name, cmd, env, self.work / f"server-{slug}.log")
        server.wait_ready(health)
        return server

    def paths(self, sc: Scenario) -> tuple[list[str], dict, list[str], list[list[int]]]:
        """Request paths of the N connections, headers, job ids, and the job indexes each watches.

        Connection i watches jobs (i*K + j) mod M, j < K: every job gets N*K/M watchers. With K = 1
        that is job i mod M, the round robin of the single-document scenarios."""
        from livedoc import jobs as ljobs

        docs = self.docs[sc.jobs]
        job_ids = [ljobs.job_id(d, 1) for d in docs]
        k = sc.docs
        watch = [[(i * k + j) % len(docs) for j in range(k)] for i in range(sc.streams)]
        if sc.system == "livedoc":
            auth = {"Authorization": f"Bearer {self.token}"}
            if sc.transport == "multi":
                return (
                    [f"/api/events?docs={','.join(docs[x] for x in w)}" for w in watch],
                    auth,
                    job_ids,
                    watch,
                )
            if sc.transport == "ws":
                return ["/api/ws"] * sc.streams, auth, job_ids, watch
            return [f"/api/documents/{docs[w[0]]}/events" for w in watch], auth, job_ids, watch
        if sc.system == "naive":
            return [f"/events/{job_ids[w[0]]}" for w in watch], {}, job_ids, watch
        return [f"/stream?channel={job_ids[w[0]]}" for w in watch], {}, job_ids, watch

    def load_client(self, sc: Scenario, out: Path) -> LoadClient:
        paths, headers, _, watch = self.paths(sc)
        docs = self.docs[sc.jobs]
        subscribe = [[docs[x] for x in w] for w in watch] if sc.transport == "ws" else None
        return LoadClient(
            self.port,
            paths,
            headers,
            out,
            wait_headers=sc.system != "flask-sse",
            kind="ws" if sc.transport == "ws" else "sse",
            subscribe=subscribe,
        )

    def warm_up(self, sc: Scenario) -> None:
        import requests

        for _ in range(3):
            if sc.system == "livedoc":
                requests.get(
                    f"{self.url}/api/documents/{self.docs[sc.jobs][0]}/status",
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=10,
                )
            else:
                requests.get(f"{self.url}/health", timeout=10)

    def drive(self, sc: Scenario) -> tuple[float, float, Counter, Counter]:
        """Save progress at sc.rate through the real contract for DRIVE_S seconds."""
        writers = self.writers[sc.jobs]
        n = int(sc.rate * DRIVE_S)
        per_job: Counter = Counter()
        driver_cmds: Counter = Counter()
        t0 = time.time()
        for i in range(n):
            delay = t0 + i / sc.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            w = writers[i % len(writers)]
            prog = w.update(
                "rendering",
                percent=min(99, w.progress["percent"] + 1),
                page=(i // len(writers)) % 50 + 1,
                pages=50,
            )
            driver_cmds.update({"multi": 1, "hset": 1, "publish": 1, "exec": 1})
            if sc.system == "flask-sse":
                # What flask_sse.sse.publish(prog, type="progress", channel=job_id) sends (it would
                # also open a new Redis client per call; the wire command is the same).
                self.raw.publish(w.job.id, json.dumps({"data": prog, "type": "progress"}))
                driver_cmds["publish"] += 1
            per_job[w.job.id] += 1
        return t0, time.time(), per_job, driver_cmds

    def run(self, sc: Scenario) -> dict:
        import psutil

        log(f"--- {sc.name}: {sc.streams} streams on {len(self.docs[sc.jobs])} jobs")
        res: dict = {"scenario": asdict(sc), "name": sc.name}
        server = self.start_server(sc)
        client = None
        spy = None
        slug = sc.name.replace(" ", "_")
        try:
            w = server.worker
            self.warm_up(sc)
            time.sleep(1)
            rss0 = w.memory_info().rss
            _, _, job_ids, watch = self.paths(sc)
            profiling = sc.name in self.profile

            def start_spy():
                proc = subprocess.Popen(
                    [
                        str(BIN / "py-spy"),
                        "record",
                        "--pid",
                        str(w.pid),
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--format",
                        "raw",
                        "--output",
                        str(self.work / f"profile-{slug}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)
                return proc

            def stop_spy(proc):
                proc.send_signal(signal.SIGINT)
                proc.wait(30)

            if profiling and self.profile_phase in ("all", "ramp"):
                spy = start_spy()
            client = self.load_client(sc, self.work / f"client-{slug}.json")
            ramped = client.expect("RAMPED", 240)
            res["ramp_s"] = round(ramped["ramp_s"], 2)
            if sc.system == "flask-sse":
                # Flask-SSE answers nothing before the first message: count a stream as open once
                # Redis shows its subscription.
                deadline = time.monotonic() + 120
                subscribed = 0
                while time.monotonic() < deadline:
                    subscribed = sum(n for _, n in self.raw.pubsub_numsub(*job_ids))
                    if subscribed >= sc.streams:
                        break
                    time.sleep(0.2)
                res["subscribed"] = subscribed
                res["ramp_s"] = round(ramped["ramp_s"] + 0, 2)
            log(f"    ramped in {res['ramp_s']} s: {ramped}")
            if spy is not None and self.profile_phase == "ramp":
                stop_spy(spy)
                spy = None
            time.sleep(2)
            rss1 = w.memory_info().rss
            res["rss_before_mb"] = round(rss0 / 2**20, 1)
            res["rss_after_mb"] = round(rss1 / 2**20, 1)
            res["rss_per_100_mb"] = round((rss1 - rss0) / 2**20 / max(1, sc.streams) * 100, 3)
            res["watches"] = sc.streams * sc.docs
            res["rss_per_100_docs_mb"] = round((rss1 - rss0) / 2**20 / max(1, res["watches"]) * 100, 3)
            if sc.system != "flask-sse":
                client.send(f"PROBE {PROBES}")
                probed = client.expect("PROBED", 120)
                res["probe_p50_ms"] = pct(probed["probe_ms"], 50)
                res["probe_p99_ms"] = pct(probed["probe_ms"], 99)
                res["probe_failed"] = probed["probe_failed"]
            if sc.idle:
                time.sleep(1)
                c0 = cmdstats(self.raw)
                w.cpu_percent(None)
                t0 = time.monotonic()
                time.sleep(IDLE_S)
                res["idle_cpu_pct"] = round(w.cpu_percent(None), 2)
                dt = time.monotonic() - t0
                d = cmdstats(self.raw) - c0
                d.pop("info", None)
                res["idle_redis_cmds_s"] = round(sum(d.values()) / dt, 1)
            if profiling and self.profile_phase == "drive":
                spy = start_spy()
            c0 = cmdstats(self.raw)
            w.cpu_percent(None)
            d0, d1, per_job, driver_cmds = self.drive(sc)
            res["drive_cpu_pct"] = round(w.cpu_percent(None), 2)
            if spy is not None and self.profile_phase == "drive":
                stop_spy(spy)
                spy = None
            c1 = cmdstats(self.raw)
            info = self.raw.info("clients")
            res["redis_clients"] = info["connected_clients"]
            dt = d1 - d0
            total = c1 - c0
            total.pop("info", None)
            total.pop("pubsub", None)  # the runner's own NUMSUB (none during the drive)
            server_cmds = total - driver_cmds
            res["redis_total_cmds_s"] = round(sum(total.values()) / dt, 1)
            res["redis_driver_cmds_s"] = round(sum(driver_cmds.values()) / dt, 1)
            res["redis_server_cmds_s"] = round(sum(server_cmds.values()) / dt, 1)
            res["redis_server_cmds"] = dict(server_cmds)
            res["saves"] = sum(per_job.values())
            time.sleep(POLL_MS / 1000 + 1.5)  # let the last polled updates arrive
            client.send("STATUS")
            status = client.expect("STATUS", 30)
            out = client.finish()
            client = None
            if spy is not None:
                stop_spy(spy)
                spy = None
            lat = [(recv - ua) * 1000 for ua, recv in out["events"] if d0 - 0.001 <= ua <= d1 + 0.001]
            watchers = Counter(x for w in watch for x in w)
            expected = sum(per_job[j] * watchers[k] for k, j in enumerate(job_ids))
            res["events"] = len(lat)
            res["events_per_s"] = round(len(lat) / (d1 - d0), 1)
            res["delivered_pct"] = round(100 * len(lat) / expected, 1) if expected else None
            res["lat_p50_ms"] = pct(lat, 50)
            res["lat_p99_ms"] = pct(lat, 99)
            res["lat_max_ms"] = max(lat) if lat else None
            conn_ms = out["connect_ms"]
            res["connect_p50_ms"] = pct(conn_ms, 50) if sc.system != "flask-sse" else None
            res["connect_p99_ms"] = pct(conn_ms, 99) if sc.system != "flask-sse" else None
            if sc.transport == "ws":
                res["handshake_p50_ms"] = pct(out["handshake_ms"], 50)
                res["handshake_p99_ms"] = pct(out["handshake_ms"], 99)
                res["ws_errors"] = out.get("ws_errors", {})
                res["denied"] = out.get("denied", 0)
            res["opened"] = len(conn_ms) if sc.system != "flask-sse" else res.get("subscribed", 0)
            res["failed"] = out["failed"]
            res["dropped"] = out["dropped"]
            res["open_at_end"] = status["open"]
            res["pings"] = out["pings"]
            res["errors"] = (
                sum(out["failed"].values())
                + sum(out["dropped"].values())
                + sum(res.get("probe_failed", {}).values())
                + sum(out.get("ws_errors", {}).values())
                + out.get("denied", 0)
            )
        except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a result, not a crash
            res["crashed"] = f"{exc.__class__.__name__}: {str(exc)[:500]}"
            log(f"    CRASHED: {res['crashed']}")
        finally:
            if client is not None:
                client.kill()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            try:
                res["server_rss_peak_mb"] = round(server.worker.memory_info().rss / 2**20, 1)
            except (psutil.Error, AttributeError):
                pass
            server.stop()
            res["server_error_lines"] = server.error_lines()
        if sc.name in self.profile:
            res["profile"] = summarize_profile(self.work / f"profile-{slug}.txt")
            res["profile"]["phase"] = self.profile_phase
        log(
            "    "
            + json.dumps(
                {k: v for k, v in res.items() if k not in ("scenario", "redis_server_cmds")}, default=str
            )
        )
        self.results.append(res)
        return res

    def close(self) -> None:
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait(10)


def summarize_profile(path: Path, top: int = 15) -> dict:
    """Top functions by own and by inclusive samples, from py-spy's collapsed-stack output."""
    if not path.exists():
        return {}
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    fmt = lambda c: [(f, round(100 * n / total, 1)) for f, n in c.most_common(top)]  # noqa: E731
    return {"samples": total, "own": fmt(own), "inclusive": fmt(incl)}


# -- reporting -------------------------------------------------------------------------------------
def f(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


COLUMNS = [
    ("scenario", lambda r: r["name"]),
    ("open", lambda r: f(r.get("opened"))),
    ("docs/conn", lambda r: f(r["scenario"].get("docs", 1))),
    ("ramp s", lambda r: f(r.get("ramp_s"), 1)),
    (
        "connect p50/p99 ms (ramp)",
        lambda r: f"{f(r.get('connect_p50_ms'), 1)} / {f(r.get('connect_p99_ms'), 1)}",
    ),
    (
        "connect p50/p99 ms (N open)",
        lambda r: f"{f(r.get('probe_p50_ms'), 1)} / {f(r.get('probe_p99_ms'), 1)}",
    ),
    ("save→recv p50/p99 ms", lambda r: f"{f(r.get('lat_p50_ms'), 1)} / {f(r.get('lat_p99_ms'), 1)}"),
    ("delivered", lambda r: f(r.get("delivered_pct"), 1, "%")),
    ("events/s", lambda r: f(r.get("events_per_s"))),
    ("RSS MB before→after", lambda r: f"{f(r.get('rss_before_mb'), 1)}→{f(r.get('rss_after_mb'), 1)}"),
    ("MB/100 conns", lambda r: f(r.get("rss_per_100_mb"), 2)),
    ("MB/100 docs watched", lambda r: f(r.get("rss_per_100_docs_mb"), 2)),
    ("idle CPU", lambda r: f(r.get("idle_cpu_pct"), 1, "%")),
    ("drive CPU", lambda r: f(r.get("drive_cpu_pct"), 1, "%")),
    ("Redis cmd/s idle", lambda r: f(r.get("idle_redis_cmds_s"), 1)),
    (
        "Redis cmd/s driven: server (total)",
        lambda r: f"{f(r.get('redis_server_cmds_s'), 1)} ({f(r.get('redis_total_cmds_s'), 1)})",
    ),
    ("Redis clients", lambda r: f(r.get("redis_clients"))),
    (
        "errors",
        lambda r: (
            r.get("crashed", "")[:60]
            or f"{r.get('errors', 0)}"
            + (f" {r['failed']}" if r.get("failed") else "")
            + (f" dropped {r['dropped']}" if r.get("dropped") else "")
            + (f" ws-errors {r['ws_errors']}" if r.get("ws_errors") else "")
            + (f" denied {r['denied']}" if r.get("denied") else "")
            + (f" srv-log {r['server_error_lines']}" if r.get("server_error_lines") else "")
        ),
    ),
]


def markdown_table(results: list[dict]) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(str(fn(r)).replace("|", "/") for _, fn in COLUMNS) + " |" for r in results]
    return "\n".join([head, sep, *rows])


def text_table(results: list[dict]) -> str:
    cells = [[c for c, _ in COLUMNS]] + [[str(fn(r)) for _, fn in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)


def by_name(results: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in results}


def verdicts(results: list[dict]) -> list[tuple[str, str, str, str]]:
    """(target, system, measured, verdict) rows for every system that has the numbers."""
    r = by_name(results)
    rows = []

    def miss(value, limit, unit, lower_is_better=True):
        if value is None:
            return "n/a"
        if value <= limit:
            return "met"
        return f"MISSED by {value - limit:,.1f}{unit} ({value / limit:.1f}x)" if lower_is_better else "missed"

    systems = [
        ("livedoc push", "livedoc push"),
        ("livedoc nopush", "livedoc nopush"),
        ("livedoc multi", "livedoc multi"),
        ("livedoc ws", "livedoc ws"),
        ("naive", "naive"),
        ("flask-sse", "flask-sse"),
    ]
    for label, prefix in systems:
        s = r.get(f"{prefix} 5000")
        if s:
            ok = not s.get("crashed") and s.get("errors", 1) == 0 and s.get("opened") == 5000
            rows.append(
                (
                    TARGETS["streams_5000_errors"],
                    label,
                    s.get("crashed") or f"{s.get('opened')} open, {s.get('errors')} errors",
                    "met" if ok else "MISSED",
                )
            )
    for label, prefix in systems:
        for n in (500, 1000, 5000):
            s = r.get(f"{prefix} {n}")
            if s and s.get("rss_per_100_mb") is not None:
                k = s["scenario"].get("docs", 1)
                per_doc = (
                    f" per 100 connections = {s['rss_per_100_docs_mb']:.2f} MB per 100 documents "
                    f"watched ({k} per connection)"
                    if k > 1
                    else ""
                )
                rows.append(
                    (
                        TARGETS["rss_per_100"],
                        f"{label} @{n}",
                        f"{s['rss_per_100_mb']:.2f} MB{per_doc}",
                        miss(s["rss_per_100_mb"], 2.0, " MB"),
                    )
                )
    for label, prefix, limit, key in (
        ("livedoc push", "livedoc push", 100, "p99_push"),
        ("livedoc multi", "livedoc multi", 100, "p99_push"),
        ("livedoc ws", "livedoc ws", 100, "p99_push"),
        ("flask-sse", "flask-sse", 100, "p99_push"),
        ("livedoc nopush", "livedoc nopush", POLL_MS + 100, "p99_nopush"),
        ("naive", "naive", POLL_MS + 100, "p99_nopush"),
    ):
        for n in (100, 500, 1000, 5000):
            s = r.get(f"{prefix} {n}")
            if s and s.get("lat_p99_ms") is not None:
                rate = f" ({s['events_per_s']:,.0f} events/s)" if s.get("events_per_s") else ""
                rows.append(
                    (
                        TARGETS[key],
                        f"{label} @{n}",
                        f"{s['lat_p99_ms']:,.1f} ms{rate}",
                        miss(s["lat_p99_ms"], limit, " ms"),
                    )
                )
    for label, prefix in systems:
        a, b = r.get(f"{prefix} 10on10"), r.get(f"{prefix} 1000on10")
        if a and b and a.get("redis_server_cmds_s") is not None and b.get("redis_server_cmds_s") is not None:
            sa, sb = a["redis_server_cmds_s"], b["redis_server_cmds_s"]
            ta, tb = a["redis_total_cmds_s"], b["redis_total_cmds_s"]
            ratio = sb / sa if sa else (1.0 if sb == 0 else float("inf"))
            tratio = tb / ta if ta else float("inf")
            rows.append(
                (
                    TARGETS["redis_ratio"],
                    label,
                    f"server {sa:,.1f} → {sb:,.1f} cmd/s = {ratio:.2f}x; incl. driver {ta:,.1f} → "
                    f"{tb:,.1f} = {tratio:.2f}x",
                    "met" if ratio <= 1.2 else f"MISSED ({ratio:.1f}x vs 1.2x)",
                )
            )
    for label, prefix in systems:
        s = r.get(f"{prefix} 1000")
        if s and s.get("probe_p99_ms") is not None:
            rows.append(
                (
                    TARGETS["connect_p99"],
                    label,
                    f"{s['probe_p99_ms']:.1f} ms",
                    miss(s["probe_p99_ms"], 50, " ms"),
                )
            )
    for label, prefix in systems + [("livedoc push, 5 s pings", "livedoc push")]:
        name = f"{prefix} 1000" + (" ping5s" if "pings" in label else "")
        s = r.get(name)
        if s and s.get("idle_cpu_pct") is not None:
            rows.append(
                (
                    TARGETS["idle_cpu"],
                    label,
                    f"{s['idle_cpu_pct']:.1f}%",
                    miss(s["idle_cpu_pct"], 2.0, " pts"),
                )
            )
    for n in (1000, 5000):
        base = r.get(f"naive {n}")
        if not base or not base.get("rss_per_100_mb"):
            continue
        for prefix, limit in MEM_LIMITS.items():
            s = r.get(f"{prefix} {n}")
            if s and s.get("rss_per_100_mb") is not None:
                ratio = s["rss_per_100_mb"] / base["rss_per_100_mb"]
                verdict = "met" if ratio <= limit else f"MISSED ({ratio:.2f}x vs {limit}x)"
                rows.append(
                    (
                        TARGETS["mem_vs_naive"],
                        f"{prefix} @{n}",
                        f"{s['rss_per_100_mb']:.2f} vs naive {base['rss_per_100_mb']:.2f} MB/100 = "
                        f"{ratio:.2f}x",
                        verdict,
                    )
                )
    for prefix in MEM_LIMITS:
        s = r.get(f"{prefix} 10000")
        if not s:
            continue
        if s.get("crashed"):
            rows.append((TARGETS["conns_10000"], prefix, s["crashed"][:80], "MISSED"))
            continue
        errs, p99, idle = s.get("errors", 1), s.get("lat_p99_ms"), s.get("idle_cpu_pct")
        ok = (
            errs == 0
            and s.get("opened") == 10000
            and p99 is not None
            and p99 <= 50
            and idle is not None
            and idle < 2
        )
        rows.append(
            (
                TARGETS["conns_10000"],
                prefix,
                f"{s.get('opened')} open, {errs} errors, p99 {f(p99, 1)} ms at "
                f"{f(s.get('events_per_s'))} events/s, idle CPU {f(idle, 1)}%",
                "met" if ok else "MISSED",
            )
        )
    for prefix in ("livedoc multi", "livedoc ws"):
        s = r.get(f"{prefix} 5000")
        if s and s.get("lat_p99_ms") is not None:
            rows.append(
                (
                    TARGETS["fanout_5000"],
                    prefix,
                    f"p99 {s['lat_p99_ms']:,.1f} ms at {s.get('events_per_s', 0):,.0f} events/s",
                    miss(s["lat_p99_ms"], 100, " ms"),
                )
            )
    return rows


def machine() -> dict:
    from importlib.metadata import version

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "?",
    )
    return {
        "date": subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gunicorn": version("gunicorn"),
        "gevent": version("gevent"),
        "greenlet": version("greenlet"),
        "redis-py": version("redis"),
        "rq": version("rq"),
        "flask": version("flask"),
        "flask-sse": version("flask-sse"),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "?",
    }


def write_markdown(path: Path, meta: dict, results: list[dict], command: str) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Streaming fan-out of livedoc (ours, stream hub: single-document SSE with push on and off, the",
        f"multiplexed SSE stream and the WebSocket transport with {DOCS_PER_CONN} documents per connection)",
        "against Flask-SSE 1.0.0 and naive per-connection polling, on one gunicorn gevent worker each,",
        "loopback only. How to run and what every column means: [bench/README.md](bench/README.md).",
        "",
        "## Run",
        "",
        f"- Command: `{command}` (at commit {meta.get('commit', '?')}, plus uncommitted changes if any)",
        f"- Date: {meta['date']} (the run took {meta.get('duration_s', 0) / 60:.0f} min); load average "
        f"(1/5/15 min) {' / '.join(map(str, meta.get('loadavg_start', [])))} at the start, "
        f"{' / '.join(map(str, meta.get('loadavg_end', [])))} at the end",
        f"- Machine: {meta['nproc']} CPUs ({meta['cpu']}), RAM {meta['ram']}, Linux {meta['kernel']}, "
        f"RLIMIT_NOFILE {meta['nofile']}",
        f"- Python {meta['python']}, gunicorn {meta['gunicorn']}, gevent {meta['gevent']}, greenlet "
        f"{meta['greenlet']}, redis-py {meta['redis-py']}, Redis server {meta['redis_server']}, "
        f"rq {meta['rq']}, Flask {meta['flask']}, Flask-SSE {meta['flask-sse']}",
        f"- Server (all): `gunicorn {' '.join(GEVENT_ARGS)} --bind 127.0.0.1:<free port>` "
        "(livedoc adds "
        f"`-c gunicorn.conf.py`); SSE_POLL_INTERVAL={POLL_MS} ms, SSE_PING_INTERVAL={PING_MS} ms unless the "
        "scenario says ping5s (5,000 ms); a fresh server for every scenario.",
        f"- Load: streams spread round-robin over {MAIN_JOBS} queued jobs (the `NonM` scenarios: over "
        f"{RATIO_JOBS}); `livedoc multi N` = N `GET /api/events?docs=<{DOCS_PER_CONN} ids>` streams, "
        f"`livedoc ws N` = N WebSockets on `/api/ws` (server `WEBSOCKET_ENABLED=true`) each subscribing to "
        f"{DOCS_PER_CONN} documents, connection i watching jobs (i*{DOCS_PER_CONN} + j) mod M, so every "
        f"job has N*{DOCS_PER_CONN}/M watchers (`multi/ws NonM`: every connection watches all {RATIO_JOBS}); "
        f"{CONCURRENCY} connects in flight during the ramp; then {PROBES} connects one at a "
        f"time with all N open; {IDLE_S:.0f} s idle; {DRIVE_S:.0f} s driven at {MAIN_RATE:.0f} progress "
        f"saves/s ({RATIO_RATE:.0f}/s on 10 jobs) through `ProgressWriter.update`.",
        "- Client, server, Redis and driver share the same 2 CPUs: latencies include that contention.",
        "",
        "## Results",
        "",
        markdown_table(results),
        "",
        "## Targets",
        "",
        "| target | system | measured | verdict |",
        "|---|---|---|---|",
        *[f"| {t} | {s} | {m} | {v} |" for t, s, m, v in verdicts(results)],
        "",
        f"The seed's old claims, for comparison: {SEED_CLAIMS}.",
        "",
    ]
    profiles = [r for r in results if r.get("profile")]
    if profiles:
        lines += ["## Profiles (py-spy, web worker)", ""]
        for r in profiles:
            p = r["profile"]
            phase = {"ramp": "the ramp", "drive": "the driven window"}.get(
                p.get("phase"), "ramp + probe + idle + drive"
            )
            lines += [
                f"### {r['name']} ({p.get('samples', 0)} samples over {phase})",
                "",
                "| own % | function |",
                "|---|---|",
                *[f"| {pc} | `{fn}` |" for fn, pc in p.get("own", [])[:12]],
                "",
            ]
    kept = ""
    if path.exists() and ANALYSIS_MARKER in path.read_text():
        kept = ANALYSIS_MARKER + path.read_text().split(ANALYSIS_MARKER, 1)[1]
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        default="quick",
        help="quick | full | floor | comma-separated scenario names from the full suite",
    )
    parser.add_argument(
        "--markdown", default=str(ROOT / "BENCHMARKS.md"), help="where to write the report ('' to skip)"
    )
    parser.add_argument("--json", default=None, help="raw results (default: bench/results/<suite>.json)")
    parser.add_argument("--profile", default="", help="comma-separated scenario names to profile with py-spy")
    parser.add_argument(
        "--profile-phase",
        default="all",
        choices=["all", "ramp", "drive"],
        help="record the whole scenario, only the ramp (connect path) or only the driven window (fan-out)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, client data)")
    parser.add_argument("--report-only", metavar="JSON", help="rewrite the report from a results file")
    args = parser.parse_args()
    if args.report_only:
        data = json.loads(Path(args.report_only).read_text())
        print(text_table(data["results"]))
        if args.markdown:
            write_markdown(Path(args.markdown), data["meta"], data["results"], data["command"])
        return

    raise_nofile()
    if args.scenarios in ("quick", "full", "floor"):
        scenarios = suite(args.scenarios)
    else:
        wanted = [s.strip() for s in args.scenarios.split(",")]
        known = {s.name: s for s in suite("full")}
        missing = [w for w in wanted if w not in known]
        if missing:
            sys.exit(f"unknown scenarios {missing}; known: {list(known)}")
        scenarios = [known[w] for w in wanted]
    profile = {s.strip() for s in args.profile.split(",") if s.strip()}
    if profile and not shutil.which("py-spy", path=str(BIN)):
        subprocess.run([str(BIN / "pip"), "install", "-q", "py-spy"], check=True)
    ensure_flask_sse()
    meta = machine()
    work = Path(tempfile.mkdtemp(prefix="livedoc-bench-"))
    log(f"work dir {work}; {len(scenarios)} scenarios; {meta['nproc']} CPUs; nofile {meta['nofile']}")
    bench = Bench(work, profile, args.profile_phase)
    started = time.monotonic()
    try:
        bench.setup()
        meta["redis_server"] = bench.redis_version
        for sc in scenarios:
            bench.run(sc)
    finally:
        bench.close()
    meta["duration_s"] = round(time.monotonic() - started)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    print()
    print(text_table(bench.results))
    print()
    for t, s, m, v in verdicts(bench.results):
        print(f"{v:>34}  {s:<26} {m:<40} {t}")
    label = args.scenarios if args.scenarios in ("quick", "full", "floor") else "custom"
    out_json = Path(args.json) if args.json else BENCH / "results" / f"{label}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(
        json.dumps({"meta": meta, "command": command, "results": bench.results}, indent=1, default=str)
    )
    if args.markdown:
        write_markdown(Path(args.markdown), meta, bench.results, command)
        log(f"wrote {args.markdown} and {out_json} (total {meta['duration_s']} s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"kept {work}")


if __name__ == "__main__":
    main()
