"""A real nginx in front of a live stack, configured with the README's own ```nginx block.

The block is taken verbatim from README.md; only what differs per host is substituted: the
`server` lines of the upstream (the stack's gunicorn addresses), the `listen 443 ...` line (a free TLS
port with HTTP/2, plus a free plain-HTTP port for HTTP/1.1 clients), `server_name` and the
certificate paths (a self-signed certificate made here). nginx runs as a process of its own with a
private prefix, pid, logs and temp directories, like tests/live.py's gunicorn and moto servers.
NGINX_README names another README to take the block from (to check an older block).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import devredis

from tests.live import Proc
from tests.support import ROOT

NGINX = Path(shutil.which("nginx") or "/usr/sbin/nginx")
README = Path(os.environ.get("NGINX_README") or ROOT / "README.md")

_BLOCK = re.compile(r"^```nginx\n(.*?)^```", re.S | re.M)
_UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+[^\s;{]+:\d+;.*\n", re.M)
_LISTEN_TLS = re.compile(r"^(\s*)listen\s+443(\s+ssl\b[^;]*;.*)$", re.M)


def readme_block(path: Path = README) -> str:
    """The one ```nginx fenced block of the README, as written."""
    blocks = _BLOCK.findall(path.read_text())
    if len(blocks) != 1:
        raise AssertionError(f"{path} has {len(blocks)} ```nginx blocks, expected exactly one")
    return blocks[0]


def _sub_once(pattern: re.Pattern | str, repl, text: str, what: str) -> str:
    compiled = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.M)
    out, n = compiled.subn(repl, text, count=1)
    if n != 1:
        raise AssertionError(f"the README's nginx block has no {what} to substitute")
    return out


def render(block: str, upstreams: list[str], tls_port: int, plain_port: int, cert: Path, key: Path) -> str:
    """The block with this host's addresses, ports and certificate put in; nothing else changes."""
    servers = _UPSTREAM_SERVER.findall(block)
    if not servers:
        raise AssertionError("the README's nginx block has no upstream `server host:port;` lines")
    indent = servers[0]
    first = True

    def upstream(m: re.Match) -> str:
        nonlocal first
        if not first:
            return ""
        first = False
        return "".join(f"{indent}server {u};\n" for u in upstreams)

    out = _UPSTREAM_SERVER.sub(upstream, block)

    # The TLS port keeps the README's parameters (http2 included); HTTP/1.1 clients get a plain port.
    def listen(m: re.Match) -> str:
        return f"{m[1]}listen 127.0.0.1:{tls_port}{m[2]}\n{m[1]}listen 127.0.0.1:{plain_port};"

    out = _sub_once(_LISTEN_TLS, listen, out, "`listen 443 ssl` line")
    out = _sub_once(r"^(\s*)server_name\s+[^;]+;", r"\1server_name 127.0.0.1 localhost;", out, "server_name")
    out = _sub_once(r"^(\s*)ssl_certificate\s+[^;]+;", rf"\1ssl_certificate {cert};", out, "ssl_certificate")
    return _sub_once(
        r"^(\s*)ssl_certificate_key\s+[^;]+;", rf"\1ssl_certificate_key {key};", out, "ssl_certificate_key"
    )


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1 and localhost: (certificate, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def _main_config(directory: Path, block: str) -> str:
    temp = directory / "temp"
    # As root the workers would drop to `nobody`, who cannot enter pytest's private tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temps = "".join(f"    {name}_temp_path {temp / name};\n" for name in kinds)
    body = "".join(f"    {line}\n" if line else "\n" for line in block.splitlines())
    return (
        f"{user}worker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {directory / 'access.log'};\n{temps}"
        "    # ---- README.md's block, substituted ----\n"
        f"{body}"
        "}\n"
    )


class Nginx:
    """nginx in front of `upstreams` (host:port): HTTP/2 over TLS on tls_port, HTTP/1.1 on plain_port."""

    def __init__(self, directory: Path, upstreams: list[str]):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "temp").mkdir(exist_ok=True)
        self.tls_port = devredis.free_port()
        self.plain_port = devredis.free_port()
        self.cert, self.key = make_certificate(self.dir)
        self.config = render(readme_block(), upstreams, self.tls_port, self.plain_port, self.cert, self.key)
        self.conf_path = self.dir / "nginx.conf"
        self.conf_path.write_text(_main_config(self.dir, self.config))
        cmd = [str(NGINX), "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.conf_path)]
        self.proc = Proc("nginx", [*cmd, "-g", "daemon off;"], dict(os.environ), self.dir)

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.plain_port}"

    def start(self, timeout: float = 20) -> Nginx:
        """Start nginx and wait until both ports accept connections."""
        self.proc.start()
        deadline = time.monotonic() + timeout
        for port in (self.tls_port, self.plain_port):
            while True:
                if self.proc.popen.poll() is not None:
                    raise RuntimeError(f"nginx exited ({self.proc.popen.returncode}):\n{self.logs()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"nginx did not listen on {port}:\n{self.logs()}") from None
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def logs(self) -> str:
        """The process output and the end of nginx's error log."""
        error_log = self.dir / "error.log"
        tail = error_log.read_text(errors="replace")[-4000:] if error_log.exists() else ""
        return f"{self.proc.log()[-2000:]}\n---- error.log\n{tail}"
