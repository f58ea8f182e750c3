"""gunicorn settings for livedoc: gevent workers sized for thousands of long-lived streams.

The values come from config.py (one home for every setting, read from the environment there)."""

import os
import resource
import signal
import sys

import gevent

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # config.py, whatever the cwd

from config import Settings  # noqa: E402

_settings = Settings.from_env()
bind = _settings.BIND
worker_class = "gevent"
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

    signal.signal(signal.SIGTERM, handle_exit)


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the merged Prometheus metrics."""
    if _settings.PROMETHEUS_MULTIPROC_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
