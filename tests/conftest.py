"""Shared fixtures: a real Redis (flushed around every test), the app, clients, and real processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import devredis  # noqa: E402

from livedoc.redis_client import connect  # noqa: E402
from tests import dbs  # noqa: E402
from tests.support import budget  # noqa: E402
from tests.support.app import Users, made_app  # noqa: E402

pytest_plugins = ["tests.support.browser"]


def pytest_terminal_summary(terminalreporter) -> None:
    """The bad-input suite's request count (tests/support/budget.py)."""
    line = budget.report()
    if line:
        terminalreporter.write_sep("-", "bad-input request budget")
        terminalreporter.write_line(line)
        if budget.shortfall():
            terminalreporter.write_line("FAILED: " + budget.shortfall(), red=True)


def pytest_sessionfinish(session) -> None:
    """Fail the run when the bad-input suite ran whole and sent too few requests."""
    if budget.shortfall() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items) -> None:
    """On scripts/test's PostgreSQL pass, keep only the tests that touch the database."""
    if os.environ.get("LIVEDOC_DB_PASS") != "postgres":
        return
    keep = [i for i in items if "database_url" in i.fixturenames or i.get_closest_marker("db")]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """TEST_REDIS_URL (scripts/test starts a throwaway server), else a server started here."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    port = devredis.free_port()
    proc = devredis.start(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_conn(redis_url) -> Redis:
    """A client on the test database, empty before and after the test."""
    conn = connect(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.connection_pool.disconnect()


@pytest.fixture
def storage_dir(tmp_path) -> Path:
    """An empty STORAGE_DIR for one test."""
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
def worker_env(redis_url, storage_dir, monkeypatch) -> dict[str, str]:
    """Environment that the conversion code (which reads config.Settings.from_env) sees in-process."""
    env = {"REDIS_URL": redis_url, "STORAGE_DIR": str(storage_dir), "JOB_RETRY_INTERVALS": "0,0,0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def database_url(tmp_path) -> str:
    """A fresh migrated database (SQLite file, or PostgreSQL with TEST_DATABASE_URL)."""
    return dbs.fresh(tmp_path / "db")


@pytest.fixture
def app(redis_conn, redis_url, storage_dir, worker_env, database_url):
    """The app on the test Redis database, a fresh migrated database and an empty STORAGE_DIR."""
    with made_app(
        redis_url,
        storage_dir,
        database_url,
        JOB_RETRY_INTERVALS="0,0,0",
        RATELIMIT_ENABLED=False,
        # Suites that upload dozens of documents without running them; tests/test_quotas.py sets its own.
        MAX_CONVERSIONS_PER_USER=10_000,
        QUOTA_DOCUMENTS=10_000,
    ) as app:
        yield app


@pytest.fixture
def client(app):
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def users(app, client) -> Users:
    """Helper to create and log in users."""
    return Users(app, client)


@pytest.fixture(scope="session")
def live_redis_url(redis_url) -> str:
    """Database 1 of the test Redis: the live stack's, never flushed under a running worker."""
    url = redis_url.rsplit("/", 1)[0] + "/1"
    conn = connect(url)
    conn.flushdb()
    conn.connection_pool.disconnect()
    return url


@pytest.fixture(scope="session")
def live(live_redis_url, tmp_path_factory):
    """A real deployment: one gunicorn (gevent) server and one `rq worker --with-scheduler`."""
    from tests.live import Stack

    stack = Stack(live_redis_url, tmp_path_factory.mktemp("live"))
    stack.start_web()
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture
def live_conn(live_redis_url) -> Redis:
    """A client on the live stack's Redis database; restores the real-time flags afterwards."""
    from livedoc import flags

    conn = connect(live_redis_url)
    flags.clear_override(conn)
    yield conn
    flags.clear_override(conn)
    conn.connection_pool.disconnect()


@pytest.fixture
def make_stack(redis_url, tmp_path):
    """Factory of deployments on Redis database 2: web servers only, until the test starts a worker."""
    from tests.live import Stack

    url = redis_url.rsplit("/", 1)[0] + "/2"
    conn = connect(url)
    conn.flushdb()
    stacks = []

    def make(**settings: str) -> Stack:
        stack = Stack(url, tmp_path / f"stack{len(stacks)}", **settings)
        stacks.append(stack)
        stack.start_web()
        return stack

    yield make
    for stack in stacks:
        stack.stop()
    conn.flushdb()
    conn.connection_pool.disconnect()


@pytest.fixture
def flag_conn(make_stack):
    """Factory of the Redis client of make_stack's stacks, for the real-time flags; override cleared after."""
    conn = None

    def get(stack) -> Redis:
        nonlocal conn
        conn = conn or connect(stack.redis_url)
        return conn

    yield get
    if conn is not None:
        from livedoc import flags

        flags.clear_override(conn)
        conn.connection_pool.disconnect()


@pytest.fixture
def paused_stack(make_stack):
    """A deployment with a web server but no worker yet: jobs wait in the queue until the test starts one."""
    return make_stack()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto's standalone S3 server, one process for the session (tests/live.py MotoServer)."""
    from tests.live import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(moto_server, request) -> dict[str, str]:
    """A fresh bucket on the moto server: the STORAGE_URL / S3_* / AWS_* settings that point at it."""
    import re

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40] + f"-{os.getpid()}"
    name = name + "-" + str(len(moto_server.client().list_buckets()["Buckets"]))
    return moto_server.settings(moto_server.bucket(name))


@pytest.fixture
def shared_database_url(database_url) -> str:
    """DATABASE_URL that several hosts share: a migrated SQLite file, or on scripts/test's PostgreSQL
    pass the throwaway PostgreSQL server (tests using it run on both)."""
    return database_url


@pytest.fixture
def make_nginx(tmp_path):
    """Factory of real nginx processes (tests/support/nginx.py: README's block) in front of upstreams."""
    from tests.support.nginx import NGINX, Nginx

    if not os.access(NGINX, os.X_OK):
        pytest.skip(f"nginx is not installed ({NGINX}): the reverse-proxy tests need Debian's nginx")
    started = []

    def make(*upstreams: str) -> Nginx:
        proxy = Nginx(tmp_path / f"nginx{len(started)}", list(upstreams))
        started.append(proxy)
        return proxy.start()

    yield make
    for proxy in started:
        proxy.stop()
