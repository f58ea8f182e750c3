"""HTML pages, the admin area and the RQ dashboard mount, CSRF and security headers."""

from __future__ import annotations

import base64
import hashlib
import io
import re

from tests.pdfgen import make_pdf
from tests.support.app import csrf_from, run_jobs


def test_rq_dashboard_is_for_admins_only(app, client, users):
    resp = client.get("/rq/")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")
    users.create("reader")
    users.login("reader")
    denied = client.get("/rq/")
    assert denied.status_code == 403 and "administrators" in denied.get_data(as_text=True)
    assert client.get("/admin/").status_code == 403
    admin = app.test_client()
    users.create("boss", admin=True)
    page = admin.get("/login")
    admin.post("/login", data={"username": "boss", "password": "pw-boss", "csrf_token": csrf_from(page.text)})
    resp = admin.get("/rq/")
    assert resp.status_code == 200 and "RQ" in resp.get_data(as_text=True)
    # Only the inline script this page rendered may run (by its hash), plus underscore's eval.
    csp = resp.headers["Content-Security-Policy"]
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src"))
    inline = re.findall(r'<script type="text/javascript">(.*?)</script>', resp.get_data(as_text=True), re.S)
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert len(inline) == 1
    assert script_src == f"script-src 'self' 'unsafe-eval' 'sha256-{digest}'"
    assert resp.headers["Content-Security-Policy"].count("'unsafe-inline'") == 1  # style-src only
    assert admin.get("/rq/0/data/queues.json").status_code == 200
    assert admin.get("/admin/").status_code == 200


def test_admin_switches_realtime_mode_for_everyone(app, client, users, redis_conn):
    users.create("boss", admin=True)
    users.login("boss")
    token = csrf_from(client.get("/admin/").text)
    resp = client.post("/admin/realtime", data={"mode": "poll", "csrf_token": token})
    assert resp.status_code == 303
    assert redis_conn.hgetall("livedoc:flags:realtime") == {b"mode": b"poll"}
    client.post("/admin/realtime", data={"mode": "default", "csrf_token": token})
    assert redis_conn.exists("livedoc:flags:realtime") == 0
    assert client.post("/admin/realtime", data={"mode": "nonsense", "csrf_token": token}).status_code == 400
    client.post("/admin/realtime", data={"switches": "1", "websocket": "on", "csrf_token": token})
    assert redis_conn.hgetall("livedoc:flags:realtime") == {b"websocket": b"1", b"push": b"0"}
    assert '"transport": "ws"' in app.test_cli_runner().invoke(args=["realtime", "show"]).output


def test_forms_need_csrf_but_token_requests_do_not(client, users):
    token = users.create("alice")
    users.login("alice")
    data = {"file": (io.BytesIO(b"hello\n"), "a.txt")}
    assert client.post("/documents", data=data, content_type="multipart/form-data").status_code == 400
    other = client.application.test_client()
    resp = other.post(
        "/api/documents",
        data={"file": (io.BytesIO(b"hello\n"), "a.txt")},
        headers={"Authorization": f"Bearer {token}"},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 201
    assert other.post("/logout").status_code in (302, 400, 401)


def test_security_headers_and_cookie_flags(client, users):
    users.create("alice")
    resp = users.login("alice")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/documents")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"


def test_viewer_renders_progress_then_pages(client, users, redis_conn):
    users.create("alice")
    users.login("alice")
    token = csrf_from(client.get("/documents").text)
    resp = client.post(
        "/documents",
        data={"file": (io.BytesIO(make_pdf(["a", "b"])), "two.pdf"), "csrf_token": token},
        content_type="multipart/form-data",
    )
    viewer_url = resp.headers["Location"]
    html = client.get(viewer_url).get_data(as_text=True)
    assert 'role="progressbar"' in html and 'data-mode="sse"' in html and 'aria-valuenow="0"' in html
    run_jobs(redis_conn)
    html = client.get(viewer_url).get_data(as_text=True)
    assert html.count('loading="lazy"') >= 2 and 'aria-valuenow="100"' in html
    listing = client.get("/documents").get_data(as_text=True)
    assert "two.pdf" in listing


def test_html_errors_are_readable_pages(client, users):
    users.create("alice")
    users.login("alice")
    resp = client.get("/documents/" + "0" * 32)
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    assert "Traceback" not in resp.get_data(as_text=True)
