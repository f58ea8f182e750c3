"""Forwarded headers against a real gunicorn: trusted for exactly TRUSTED_PROXIES hops, else ignored."""

from __future__ import annotations

import json

import pytest
import requests

from tests.live import password_for
from tests.support.app import csrf_from

pytestmark = pytest.mark.live


def _login(base: str, name: str, password: str, headers: dict) -> requests.Response:
    page = requests.get(f"{base}/login", headers=headers, timeout=10)
    # Sent by hand: over (proxied) https the cookie is Secure and requests keeps it off plain http.
    cookie = page.headers["Set-Cookie"].split(";")[0]
    return requests.post(
        f"{base}/login",
        data={"username": name, "password": password, "csrf_token": csrf_from(page.text)},
        headers={**headers, "Cookie": cookie, "Referer": base.replace("http:", "https:") + "/login"},
        allow_redirects=False,
        timeout=10,
    )


def _audit_ips(stack, event: str) -> list[str]:
    ips = []
    for line in stack.logs().splitlines():
        if "livedoc.audit" in line and f'"event":"{event}"' in line:
            ips.append(json.loads(line[line.index("{") :])["ip"])
    return ips


def test_without_trusted_proxies_forwarded_headers_are_ignored(make_stack):
    stack = make_stack(RATELIMIT_LOGIN="3 per minute", RATELIMIT_LOGIN_USER="100 per minute")
    stack.user("alice")
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    ok = _login(stack.base_url, "alice", password_for("alice"), spoof)
    assert ok.status_code == 302
    assert "Secure" not in ok.headers["Set-Cookie"] and "Strict-Transport-Security" not in ok.headers
    assert _audit_ips(stack, "login") == ["127.0.0.1"]
    # Every attempt counts against the one real address, whatever address each one claims.
    for i in range(2):
        headers = {"X-Forwarded-For": f"203.0.113.{i + 10}"}
        assert _login(stack.base_url, f"nobody{i}", "wrong", headers).status_code == 401
    assert _login(stack.base_url, "nobody", "wrong", {"X-Forwarded-For": "203.0.113.99"}).status_code == 429


def test_one_trusted_proxy_gives_the_real_client_address_and_scheme(make_stack):
    stack = make_stack(
        TRUSTED_PROXIES="1", RATELIMIT_LOGIN="3 per minute", RATELIMIT_LOGIN_USER="100 per minute"
    )
    stack.user("alice")
    # The client claims 198.51.100.66; the one proxy appends the address it saw, which is what counts.
    via_proxy = {"X-Forwarded-For": "198.51.100.66, 203.0.113.9", "X-Forwarded-Proto": "https"}
    ok = _login(stack.base_url, "alice", password_for("alice"), via_proxy)
    assert ok.status_code == 302
    assert "; Secure" in ok.headers["Set-Cookie"]
    assert ok.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert _audit_ips(stack, "login") == ["203.0.113.9"]
    plain = _login(stack.base_url, "alice", password_for("alice"), {"X-Forwarded-For": "203.0.113.9"})
    assert "Secure" not in plain.headers["Set-Cookie"] and "Strict-Transport-Security" not in plain.headers
    # 203.0.113.9 has used its 3 logins a minute (two pages are GETs, not counted; two POSTs above).
    assert _login(stack.base_url, "nobody", "wrong", {"X-Forwarded-For": "203.0.113.9"}).status_code == 401
    assert _login(stack.base_url, "nobody", "wrong", {"X-Forwarded-For": "203.0.113.9"}).status_code == 429
    # Another client behind the same proxy is not locked out by it.
    other = _login(stack.base_url, "nobody", "wrong", {"X-Forwarded-For": "203.0.113.10"})
    assert other.status_code == 401
