"""Login throttling that cannot be turned against a user (ASVS 2.2.1): failures count per (name, client
address), and the slower per-name limit only refuses clients that have failed for that name."""

from __future__ import annotations

import json
import logging

import pytest

from tests.support.app import Users, csrf_from, made_app


@pytest.fixture
def throttled_app(redis_conn, redis_url, storage_dir, worker_env, database_url):
    with made_app(
        redis_url,
        storage_dir,
        database_url,
        RATELIMIT_ENABLED=True,
        RATELIMIT_LOGIN="1000 per minute",  # the per-address limit is not what these tests are about
        RATELIMIT_LOGIN_USER="10 per minute",
        RATELIMIT_LOGIN_NAME="5 per hour",
        TRUSTED_PROXIES=1,
    ) as app:
        Users(app, app.test_client()).create("alice", "alice-right-password")
        yield app


def _login(app, address: str, password: str, name: str = "alice"):
    """One login from `address` as the one trusted proxy reports it, on a client of its own."""
    client = app.test_client()
    headers = {"X-Forwarded-For": address}
    page = client.get("/login", headers=headers)
    form = {"username": name, "password": password, "csrf_token": csrf_from(page.get_data(as_text=True))}
    return client.post("/login", data=form, headers=headers)


A, B = "198.51.100.1", "198.51.100.2"


def test_wrong_passwords_from_one_address_do_not_lock_the_user_out(throttled_app, caplog):
    caplog.set_level(logging.INFO, logger="livedoc.audit")
    codes = [_login(throttled_app, A, "wrong").status_code for _ in range(15)]
    # alice, from a client that never failed, logs in.
    ok = _login(throttled_app, B, "alice-right-password")
    assert ok.status_code == 302, ok.status_code
    # The first failures are answered; the per-name limit (5) refuses A from then on, whose
    # failures it counts; the pair limit (10) would too.
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
    refused = _login(throttled_app, A, "alice-right-password")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    locks = [json.loads(r.getMessage()) for r in caplog.records if '"event":"login_locked"' in r.getMessage()]
    assert [(r["user"], r["ip"], r["scope"]) for r in locks] == [("alice", A, "name")], locks


def test_the_pair_limit_refuses_that_client_only(
    redis_conn, redis_url, storage_dir, worker_env, database_url, caplog
):
    caplog.set_level(logging.INFO, logger="livedoc.audit")
    with made_app(
        redis_url,
        storage_dir,
        database_url,
        RATELIMIT_ENABLED=True,
        RATELIMIT_LOGIN="1000 per minute",
        RATELIMIT_LOGIN_USER="3 per minute",
        RATELIMIT_LOGIN_NAME="100 per hour",
        TRUSTED_PROXIES=1,
    ) as app:
        Users(app, app.test_client()).create("alice", "alice-right-password")
        assert [_login(app, A, "wrong").status_code for _ in range(5)] == [401, 401, 401, 429, 429]
        refused = _login(app, A, "alice-right-password")
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 61
        assert refused.get_json() is None and b"Too many" in refused.data  # the login page is HTML
        # The name matches case-insensitively: "ALICE" is the same account to the limit.
        assert _login(app, A, "alice-right-password", name="ALICE").status_code == 429
        assert _login(app, B, "alice-right-password").status_code == 302
        # Another name from A is a different pair.
        assert _login(app, A, "wrong", name="bob").status_code == 401
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "livedoc.audit"]
    locks = [(r["user"], r["ip"], r["scope"]) for r in lines if r["event"] == "login_locked"]
    assert locks == [("alice", A, "client")], locks
    refusals = [r for r in lines if r["event"] == "limit_hit" and r.get("limit") == "login"]
    assert len(refusals) == 4 and {r["ip"] for r in refusals} == {A}, refusals


def test_the_per_name_limit_over_many_addresses_still_lets_a_clean_client_in(throttled_app):
    # Five addresses fail once each: the name's limit (5 an hour) is used up.
    for i in range(5):
        assert _login(throttled_app, f"203.0.113.{i}", "wrong").status_code == 401
    # Those who failed are refused, even with the right password...
    assert _login(throttled_app, "203.0.113.0", "alice-right-password").status_code == 429
    # ...a client that has not failed may still try, and once it fails it is refused too...
    assert _login(throttled_app, "203.0.113.50", "wrong").status_code == 401
    assert _login(throttled_app, "203.0.113.50", "wrong").status_code == 429
    # ...and a client that never failed logs in with the right password.
    assert _login(throttled_app, "192.0.2.7", "alice-right-password").status_code == 302


def test_a_correct_login_clears_that_clients_failures(throttled_app, redis_conn):
    from livedoc import keys

    for _ in range(2):
        assert _login(throttled_app, A, "wrong").status_code == 401
    assert len(redis_conn.keys(keys.LOGIN_FAILURES + "*")) == 1
    assert _login(throttled_app, A, "alice-right-password").status_code == 302
    assert redis_conn.keys(keys.LOGIN_FAILURES + "*") == []


def test_with_redis_down_logins_are_checked_unthrottled(storage_dir, worker_env, database_url, redis_conn):
    # As every rate limit here (RATELIMIT_SWALLOW_ERRORS): the throttle lets logins through, it does
    # not turn them into 503s.
    with made_app(
        "redis://127.0.0.1:1/0", storage_dir, database_url, RATELIMIT_ENABLED=True, TRUSTED_PROXIES=1
    ) as app:
        Users(app, app.test_client()).create("alice", "alice-right-password")
        assert _login(app, A, "wrong").status_code == 401
        assert _login(app, A, "alice-right-password").status_code == 302
