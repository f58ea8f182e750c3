"""Sessions, login throttling, passwords, API tokens and the metrics token: who may act, and for how long."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest

from tests.support.app import csrf_from, made_app

LONG = "a-long-password-1"


def _login(client, name: str, password: str, **environ):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": csrf_from(page.get_data(as_text=True))},
        environ_overrides=environ,
    )


def _cookie(client) -> str:
    return client.get_cookie("session").value


def test_login_starts_a_fresh_session(app, client, users):
    users.create("alice")
    client.get("/login")
    with client.session_transaction() as sess:
        sess["planted"] = "by an attacker"
        before_csrf = sess.get("csrf_token")
    assert users.login("alice").status_code == 302
    with client.session_transaction() as sess:
        assert "planted" not in sess
        assert sess.get("csrf_token") != before_csrf
        assert sess["_user_id"] == "1:0"
        assert sess.permanent is True


def test_logout_ends_every_session_of_the_user(app, users):
    users.create("alice")
    first, second, third = app.test_client(), app.test_client(), app.test_client()
    for c in (first, second):
        assert _login(c, "alice", "pw-alice").status_code == 302
        assert c.get("/api/documents").status_code == 200
    stolen = _cookie(first)
    page = first.get("/documents")
    token = csrf_from(page.get_data(as_text=True))
    assert first.post("/logout", data={"csrf_token": token}).status_code == 302
    assert second.get("/api/documents").status_code == 401  # the other browser is logged out too
    third.set_cookie("session", stolen)  # and a copy of the old cookie is worthless
    assert third.get("/api/documents").status_code == 401
    assert _login(second, "alice", "pw-alice").status_code == 302
    assert second.get("/api/documents").status_code == 200


def test_a_password_change_ends_every_session(app, client, users):
    users.create("alice")
    assert _login(client, "alice", "pw-alice").status_code == 302
    out = app.test_cli_runner().invoke(args=["users", "passwd", "alice", "--password", LONG])
    assert out.exit_code == 0, out.output
    assert client.get("/api/documents").status_code == 401
    assert _login(client, "alice", "pw-alice").status_code == 401
    assert _login(client, "alice", LONG).status_code == 302


def test_the_session_lifetime_is_configurable(app, client, users):
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=90)
    users.create("alice")
    resp = _login(client, "alice", "pw-alice")
    cookie = resp.headers["Set-Cookie"]
    expires = parsedate_to_datetime(cookie.split("Expires=")[1].split(";")[0])
    assert abs((expires - datetime.now(UTC)).total_seconds() - 90) < 10, cookie


def test_cookies_are_secure_and_hsts_sent_only_over_https(app, users):
    users.create("alice")
    plain = app.test_client()
    resp = _login(plain, "alice", "pw-alice")
    assert "Secure" not in resp.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in resp.headers
    secure = app.test_client()
    page = secure.get("/login", base_url="https://localhost")
    resp = secure.post(
        "/login",
        base_url="https://localhost",
        headers={"Referer": "https://localhost/login"},
        data={
            "username": "alice",
            "password": "pw-alice",
            "csrf_token": csrf_from(page.get_data(as_text=True)),
        },
    )
    assert resp.status_code == 302
    assert resp.headers["Set-Cookie"].endswith("; Secure") or "; Secure;" in resp.headers["Set-Cookie"]
    assert resp.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@pytest.fixture
def limited_app(redis_conn, redis_url, storage_dir, worker_env, database_url):
    with made_app(
        redis_url,
        storage_dir,
        database_url,
        RATELIMIT_ENABLED=True,
        RATELIMIT_LOGIN="1000 per minute",
        RATELIMIT_LOGIN_USER="3 per minute",
    ) as app:
        yield app


def test_login_is_throttled_per_username_and_address(limited_app):
    from tests.support.app import Users

    client = limited_app.test_client()
    Users(limited_app, client).create("alice")
    for _ in range(3):
        assert _login(client, "alice", "wrong", REMOTE_ADDR="198.51.100.1").status_code == 401
    resp = _login(client, "ALICE", "pw-alice", REMOTE_ADDR="198.51.100.1")
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    assert _login(client, "bob", "wrong", REMOTE_ADDR="198.51.100.1").status_code == 401
    # Guesses from elsewhere lock nobody out: alice, from an address that has not failed, logs in
    # (tests/test_login_throttle.py covers the per-name limit).
    assert _login(client, "alice", "pw-alice", REMOTE_ADDR="198.51.100.77").status_code == 302


def test_an_unknown_user_costs_what_a_wrong_password_costs(app, client, users):
    users.create("alice")
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))

    def median(name: str) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            resp = client.post("/login", data={"username": name, "password": "wrong", "csrf_token": token})
            times.append(time.perf_counter() - started)
            assert resp.status_code == 401
        return statistics.median(times)

    wrong, unknown = median("alice"), median("nobody-by-that-name")
    # A password hash costs tens of milliseconds; skipping it for unknown names costs about nothing.
    assert unknown > 0.4 * wrong, (unknown, wrong)


@pytest.mark.parametrize("length,ok", [(11, False), (12, True)])
def test_the_cli_refuses_passwords_under_12_characters(app, length, ok):
    out = app.test_cli_runner().invoke(args=["users", "create", "carol", "--password", "p" * length])
    assert (out.exit_code == 0) is ok, out.output
    if not ok:
        assert "at least 12 characters" in out.output
    passwd = app.test_cli_runner().invoke(args=["users", "passwd", "carol", "--password", "q" * length])
    assert (passwd.exit_code == 0) is ok, passwd.output


def test_api_tokens_are_listed_revoked_and_expire(app, client, users):
    from livedoc.extensions import db
    from livedoc.models import ApiToken

    users.create("alice")
    cli = app.test_cli_runner()
    out = cli.invoke(args=["users", "token", "alice", "--name", "ci", "--expires-days", "2"])
    assert out.exit_code == 0, out.output
    token = out.output.strip()
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/documents", headers=auth).status_code == 200
    listing = cli.invoke(args=["users", "tokens", "alice"]).output.splitlines()
    assert listing[0] == "id\tname\tcreated_at\texpires_at\trevoked_at"
    rows = [line.split("\t") for line in listing[1:]]
    assert [(r[0], r[1], r[4]) for r in rows] == [("1", "default", "-"), ("2", "ci", "-")]
    assert token not in "\n".join(listing)
    expires = datetime.fromisoformat(rows[1][3])
    assert timedelta(days=1, hours=23) < expires - datetime.now(UTC).replace(tzinfo=None) <= timedelta(days=2)

    with app.app_context():
        row = db.session.get(ApiToken, 2)
        row.expires_at = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
        db.session.commit()
    expired = client.get("/api/documents", headers=auth)
    assert expired.status_code == 401 and expired.get_json()["error"]["code"] == "unauthorized"

    fresh = cli.invoke(args=["users", "token", "alice", "--name", "laptop"]).output.strip()
    assert client.get("/api/documents", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    out = cli.invoke(args=["users", "revoke-token", "alice", "3"])
    assert out.exit_code == 0 and out.output.strip() == "token 3 of 'alice' revoked"
    assert client.get("/api/documents", headers={"Authorization": f"Bearer {fresh}"}).status_code == 401
    assert cli.invoke(args=["users", "revoke-token", "alice", "99"]).exit_code != 0
    assert cli.invoke(args=["users", "tokens", "alice"]).output.splitlines()[3].split("\t")[4] != "-"


def test_metrics_accept_the_read_only_metrics_token(app, client, users):
    app.config["METRICS_TOKEN"] = "m" * 40
    reader = users.create("reader")
    admin = users.create("boss", admin=True)
    scrape = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 40})
    assert scrape.status_code == 200 and b"livedoc_open_streams" in scrape.data
    assert client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 39}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert client.get("/metrics").status_code == 401
    app.config["METRICS_TOKEN"] = ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_a_remember_cookie_dies_with_the_session_version(app, users):
    from flask_login.utils import encode_cookie

    from livedoc.models import User

    users.create("alice")
    with app.app_context():
        cookie = encode_cookie(User.by_name("alice").get_id())
    browser = app.test_client()
    browser.set_cookie("remember_token", cookie)
    assert browser.get("/api/documents").status_code == 200
    out = app.test_cli_runner().invoke(args=["users", "passwd", "alice", "--password", LONG])
    assert out.exit_code == 0, out.output
    stale = app.test_client()
    stale.set_cookie("remember_token", cookie)
    assert stale.get("/api/documents").status_code == 401
