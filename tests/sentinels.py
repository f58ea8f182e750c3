"""Real Redis high availability for tests: a master, a replica and three redis-sentinel processes."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import devredis
from redis import Redis
from redis.exceptions import RedisError

MASTER = "livedoc"


def sentinel_binary() -> str | None:
    """Debian's redis-sentinel (redis-server in sentinel mode), or None."""
    return shutil.which("redis-sentinel")


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (RedisError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout} s")


class SentinelGroup:
    """One master, one replica, three sentinels (quorum 2), all on free loopback ports."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_ports = [devredis.free_port(), devredis.free_port()]
        self.sentinel_ports = [devredis.free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        """REDIS_URL for livedoc: every sentinel, the master's name, db 0."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        # The child writes to its own copy of the descriptor; this process's copy is closed at once.
        with open(self.base / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start(self) -> SentinelGroup:
        self.base.mkdir(parents=True, exist_ok=True)
        master, replica = self.redis_ports
        for i, port in enumerate(self.redis_ports):
            d = self.base / f"redis-{port}"
            d.mkdir()
            cmd = devredis.server_command(port, d)
            if i == 1:
                cmd += ["--replicaof", "127.0.0.1", str(master)]
            self._spawn(f"redis-{port}", cmd)
        _wait(
            lambda: Redis(port=replica).info("replication")["master_link_status"] == "up",
            20,
            "replica in sync",
        )
        for port in self.sentinel_ports:
            d = self.base / f"sentinel-{port}"
            d.mkdir()
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self._spawn(f"sentinel-{port}", [sentinel_binary(), str(conf)])
        # Ready when every sentinel knows the replica and the two other sentinels.
        for port in self.sentinel_ports:
            s = Redis(port=port, decode_responses=True)
            _wait(
                lambda s=s: len(s.sentinel_slaves(MASTER)) == 1 and len(s.sentinel_sentinels(MASTER)) == 2,
                30,
                f"sentinel {port} sees the group",
            )
        return self

    def master_port(self) -> int:
        """The master's port as the sentinels tell it now."""
        s = Redis(port=self.sentinel_ports[0], decode_responses=True)
        return int(s.sentinel_get_master_addr_by_name(MASTER)[1])

    def failover(self) -> int:
        """SENTINEL FAILOVER: the replica becomes master; returns its port once it accepts writes."""
        old = self.master_port()
        Redis(port=self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", MASTER)
        new = _wait(lambda: (p := self.master_port()) != old and p, 30, "failover")
        _wait(lambda: Redis(port=new).info("replication")["role"] == "master", 20, "new master")
        return new

    def kill_master(self) -> int:
        """SIGKILL the master and wait for the sentinels to promote the replica; returns its port."""
        old = self.master_port()
        self.procs[f"redis-{old}"].kill()
        self.procs[f"redis-{old}"].wait(5)
        new = _wait(lambda: (p := self.master_port()) != old and p, 60, "failover after the master died")
        _wait(lambda: Redis(port=new).info("replication")["role"] == "master", 20, "new master")
        return new

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
