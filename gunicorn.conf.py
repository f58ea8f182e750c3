"""gunicorn settings for livedoc: gevent workers sized for thousands of long-lived streams.

The values come from config.py (one home for every setting, read from the environment there)."""

import os
import resource
import signal
import socket
import sys

import gevent
from gunicorn.workers.ggevent import GeventWorker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # config.py, whatever the cwd

from config import Settings  # noqa: E402

_settings = Settings.from_env()


class StreamWorker(GeventWorker):
    """gunicorn's gevent worker, which also closes its idle kept-alive connections when it stops.

    A stopping worker no longer accepts connections but still serves the next request on one kept
    alive; a stream opened there ends at once, so a reload cost each browser a second reconnect (and
    its `retry:` wait). Closed now, the browser's next request opens a connection to a live worker."""

    def init_process(self):
        """Start with no connections known."""
        self.idle = {}  # client socket -> True while it waits for its next request
        super().init_process()

    def handle(self, listener, client, addr):
        """Serve one connection, known as idle between its requests."""
        self.idle[client] = True
        try:
            super().handle(listener, client, addr)
        finally:
            self.idle.pop(client, None)

    def handle_request(self, listener_name, req, sock, addr):
        """Serve one request; the connection is busy meanwhile."""
        self.idle[sock] = False
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if sock in self.idle:
                self.idle[sock] = True

    def close_idle(self):
        """Close every connection that waits for a next request (the worker is stopping)."""
        for sock, idle in list(self.idle.items()):
            if idle:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone


bind = _settings.BIND
worker_class = StreamWorker
workers = _settings.WEB_CONCURRENCY
# Each open SSE stream is one greenlet and one socket; this caps them per worker process.
worker_connections = _settings.WORKER_CONNECTIONS
# For gevent workers `timeout` is the heartbeat the worker sends from its own greenlet, not a limit
# on request length, so long streams are not killed by it.
timeout = 30
# On SIGTERM streams are told to end at once (see post_worker_init); this bounds the rest.
graceful_timeout = _settings.GRACEFUL_TIMEOUT
# Short: an idle kept-alive connection holds a stopping worker until it times out.
keepalive = 5
# The app applies X-Forwarded-For/-Proto itself, for exactly TRUSTED_PROXIES hops (livedoc.proxies);
# gunicorn would otherwise take X-Forwarded-Proto from any local peer and make a spoofed https real.
secure_scheme_headers = {}
forwarded_allow_ips = ""
accesslog = _settings.ACCESS_LOG or None
errorlog = "-"
loglevel = _settings.LOG_LEVEL.lower()


def on_starting(server):
    """Raise the open-file limit to the hard limit: every stream is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def post_worker_init(worker):
    """On SIGTERM (shutdown, HUP recycle) end every open stream at once, so browsers reconnect
    to a live worker instead of waiting out the graceful timeout on a dying one."""
    original = worker.handle_exit

    def handle_exit(sig, frame):
        original(sig, frame)
        hub = getattr(worker.wsgi, "extensions", {}).get("livedoc.hub")
        if hub is not None:
            gevent.spawn(hub.close_all, "shutdown")
        gevent.spawn(worker.close_idle)

    signal.signal(signal.SIGTERM, handle_exit)
    from blueprints.documents import sweep_forever

    gevent.spawn(sweep_forever, worker.wsgi)


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the merged Prometheus metrics."""
    if _settings.PROMETHEUS_MULTIPROC_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
