"""TRUSTED_PROXIES: forwarded client addresses and schemes are believed only behind that many proxies."""
from __future__ import annotations

import pytest

from tests.conftest import csrf_from


def login_codes(app, forwarded_for: list[str], https: bool) -> list[int]:
    client = app.test_client()
    codes = []
    for ip in forwarded_for:
        token = csrf_from(client.get("/login").get_data(as_text=True))
        headers = {"X-Forwarded-For": ip}
        if https:
            # Flask-WTF checks the Referer of https requests only, against the request's own origin:
            # an http Referer fails that check exactly when the forwarded https is believed.
            headers.update({"X-Forwarded-Proto": "https", "Referer": "http://localhost/login"})
        resp = client.post("/login", data={"username": "x", "password": "y", "csrf_token": token},
                           headers=headers)
        codes.append(resp.status_code)
    return codes


@pytest.mark.parametrize("proxies, https, expected", [
    (0, False, [401, 429, 429]),  # the header is the client's own word: one address, one limit
    (1, False, [401, 429, 401]),  # behind nginx: each client address has its own limit
    (0, True, [401, 429, 429]),  # nor is the scheme: the request stays http
    (1, True, [400, 400, 400]),  # https believed: the http Referer is another origin
])
def test_forwarded_headers_count_only_behind_trusted_proxies(redis_conn, redis_url, tmp_path, proxies, https,
                                                             expected):
    from app import create_app

    app = create_app({"TESTING": True, "SECRET_KEY": "t", "REDIS_URL": redis_url,
                      "STORAGE_DIR": str(tmp_path / "s"),
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'db'}",
                      "RATELIMIT_LOGIN": "1 per minute", "TRUSTED_PROXIES": proxies})
    assert login_codes(app, ["203.0.113.1", "203.0.113.1", "203.0.113.2"], https) == expected
    app.extensions["livedoc.redis"].connection_pool.disconnect()
