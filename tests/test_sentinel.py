"""Redis Sentinel: URL parsing, the web's client and rate limits, and a live failover mid-conversion."""

from __future__ import annotations

import hashlib

import pytest
from redis import Redis

from config import Settings
from livedoc.redis_client import ResilientRedis, SentinelBlockingConnectionPool, SentinelURL, connect
from tests.live import Stack, api
from tests.sentinels import MASTER, SentinelGroup, sentinel_binary
from tests.support import wait_for
from tests.support.app import Users, csrf_from
from tests.support.streams import Viewer, settled_status, slow_pdf, upload

needs_sentinel = pytest.mark.skipif(
    sentinel_binary() is None, reason="redis-sentinel is not installed (Debian: redis-sentinel)"
)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis+sentinel://127.0.0.1:26379/mymaster/3", SentinelURL([("127.0.0.1", 26379)], "mymaster", 3)),
        (
            "redis+sentinel://:s3cret@a:1,b:2, c:3/m",
            SentinelURL([("a", 1), ("b", 2), ("c", 3)], "m", 0, None, "s3cret"),
        ),
        ("redis+sentinel://me:p%40ss@[::1]:5000/m/0", SentinelURL([("[::1]", 5000)], "m", 0, "me", "p@ss")),
    ],
)
def test_sentinel_url_parses(url, expected):
    assert SentinelURL.parse(url) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "redis+sentinel://a:1",
        "redis+sentinel://a/m/0",
        "redis+sentinel://a:1/m/x",
        "redis+sentinel://a:1/m/0/1",
        "redis+sentinel://:x/m",
    ],
)
def test_bad_sentinel_url_is_a_clear_settings_error(bad):
    with pytest.raises(ValueError, match="bad value for REDIS_URL: (sentinel|a sentinel URL)"):
        Settings.from_env({"REDIS_URL": bad})


def test_redis_sentinels_setting_makes_the_url_and_keeps_the_db():
    env = {
        "REDIS_URL": "redis://ignored:6379/4",
        "REDIS_SENTINELS": "s1:26379, s2:26379",
        "REDIS_SENTINEL_MASTER": "prod",
    }
    assert Settings.from_env(env).REDIS_URL == "redis+sentinel://s1:26379,s2:26379/prod/4"
    assert Settings.from_env({"REDIS_SENTINELS": "s1:1"}).REDIS_URL == "redis+sentinel://s1:1/mymaster/0"
    with pytest.raises(ValueError, match="bad value for REDIS_SENTINELS"):
        Settings.from_env({"REDIS_SENTINELS": "s1"})


def test_limiter_uri_moves_the_db_out_of_the_path():
    spec = SentinelURL.parse("redis+sentinel://:pw@a:1,b:2/m/5")
    assert spec.limiter_uri() == "redis+sentinel://:pw@a:1,b:2/m"


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """A sentinel-managed master and replica shared by this module's tests that fail nothing over."""
    if sentinel_binary() is None:
        pytest.skip("redis-sentinel is not installed (Debian: redis-sentinel)")
    g = SentinelGroup(tmp_path_factory.mktemp("sentinels")).start()
    yield g
    g.stop()


@needs_sentinel
def test_clients_find_the_master_through_the_sentinels(group):
    web = connect(group.url, max_connections=7)
    assert isinstance(web.connection_pool, SentinelBlockingConnectionPool)
    assert web.connection_pool.max_connections == 7
    web.set("livedoc:test:where", b"master")
    master = Redis(port=group.master_port())
    assert master.get("livedoc:test:where") == b"master"
    assert master.info("replication")["role"] == "master"
    worker = ResilientRedis.from_url(group.url)
    assert worker.get("livedoc:test:where") == b"master"
    assert worker.connection_pool.connection_kwargs["retry"]._retries == 20
    master.delete("livedoc:test:where")


@needs_sentinel
def test_rate_limits_are_kept_in_the_sentinel_master(group, tmp_path, database_url):
    from app import create_app

    db = 2
    url = group.url.rsplit("/", 1)[0] + f"/{db}"
    master = Redis(port=group.master_port(), db=db)
    master.flushdb()
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "t",
            "REDIS_URL": url,
            "STORAGE_DIR": str(tmp_path / "s"),
            "SQLALCHEMY_DATABASE_URI": database_url,
            "RATELIMIT_LOGIN": "2 per minute",
        }
    )
    client = app.test_client()
    codes = []
    for _ in range(3):
        token = csrf_from(client.get("/login").get_data(as_text=True))
        form = {"username": "x", "password": "y", "csrf_token": token}
        codes.append(client.post("/login", data=form).status_code)
    assert codes == [401, 401, 429]  # wrong password twice, then limited
    counters = {k: master.get(k) for k in master.keys("LIMITS*") + master.keys("livedoc:login-fail*")}
    # The login limits (per address; failures per name and address, per name) count in the master,
    # not in a local fallback; the third attempt was refused before its password was checked.
    digest = hashlib.sha256(b"x").hexdigest()[:32]
    assert counters == {
        b"LIMITS:LIMITER/127.0.0.1/auth.login/2/1/minute": b"3",
        f"livedoc:login-fail:{digest}:127.0.0.1".encode(): b"2",
        f"livedoc:login-fail-name:{digest}".encode(): b"2",
    }, counters
    master.flushdb()


PAGES = 300


@pytest.mark.live
@needs_sentinel
@pytest.mark.timeout(300)  # a failover, then the master killed: each waits out the sentinels
def test_viewers_survive_a_failover_and_the_master_dying_mid_conversion(tmp_path):
    group = SentinelGroup(tmp_path / "sentinels").start()
    # One render process at 300 dpi on PAGES pages: the conversion outlasts a failover and a kill.
    stack = Stack(group.url, tmp_path / "stack", RENDER_DPI="300", RENDER_PROCESSES="1")
    try:
        stack.start_web()
        stack.start_worker()
        token = stack.user("ha")
        s = api(token)
        body = upload(s, stack.base_url, slow_pdf(PAGES))
        viewer = Viewer("through-failovers", token, stack.base_url, body["events_url"], deadline=150)
        viewer.start()

        def rendering(page: int):
            return viewer.latest and viewer.latest["stage"] == "rendering" and viewer.latest["page"] >= page

        wait_for(lambda: rendering(5), 60, what="rendering page 5")
        first_master = group.master_port()
        second_master = group.failover()
        at_failover = viewer.seq
        wait_for(lambda: viewer.seq > at_failover + 3, 30, what="progress after the failover")
        # Now the hard way: the master dies without a goodbye and the sentinels promote the replica.
        third_master = group.kill_master()
        at_kill = viewer.seq
        wait_for(lambda: viewer.seq > at_kill + 3, 60, what="progress after the master died")
        final = viewer.finish(120)
        truth = settled_status(s, stack.base_url, body, 30)
        assert (first_master, second_master, third_master) == (
            group.redis_ports[0],
            group.redis_ports[1],
            group.redis_ports[0],
        )
        assert final is not None, f"viewer did not end: {viewer.failures}\n{stack.logs()}"
        assert (final["state"], final["ready"], final["pages"]) == ("complete", PAGES, PAGES)
        assert (truth["state"], truth["seq"]) == ("complete", final["seq"])
        ready = [p["ready"] for p in viewer.applied if "ready" in p]
        assert ready == sorted(ready)  # pages never went back across the failovers
        assert Redis(port=third_master).info("replication")["role"] == "master"
        assert MASTER in group.url
    finally:
        stack.stop()
        group.stop()


@needs_sentinel
def test_rq_dashboard_reads_queues_through_the_sentinels(group, tmp_path, database_url):
    from app import create_app

    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "t",
            "REDIS_URL": group.url.rsplit("/", 1)[0] + "/3",
            "STORAGE_DIR": str(tmp_path / "s"),
            "SQLALCHEMY_DATABASE_URI": database_url,
            "RATELIMIT_ENABLED": False,
        }
    )
    client = app.test_client()
    users = Users(app, client)
    users.create("boss", admin=True)
    assert users.login("boss").status_code == 302
    resp = client.get("/rq/0/data/queues.json")
    assert resp.status_code == 200
    assert resp.get_json()["queues"] == []
