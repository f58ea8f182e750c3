"""The web's small hardening points (issue M 5-6): the CSRF exemption needs a valid token, HTML is never
cached, a database that is down is a 503 page with the usual headers, a full disk is a 507, the RQ
dashboard answers 404 to bad URLs, a deep WebSocket message is refused, no secret on a command line."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _upload_text(client, token: str, data: bytes = b"hello\n") -> str:
    resp = client.post(
        "/api/documents",
        headers=_bearer(token),
        data={"file": (io.BytesIO(data), "a.txt")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()["id"]


def _page_csrf(client) -> str:
    from tests.support.app import csrf_from

    return csrf_from(client.get("/documents").get_data(as_text=True))


# -- CSRF: only a valid API token exempts a write, and then the cookie is not used -------------------


def test_a_bogus_bearer_header_does_not_exempt_a_cookie_write_from_csrf(app, client, users):
    token = users.create("alice")
    doc_id = _upload_text(client, token)
    assert users.login("alice").status_code == 302  # the client now holds alice's session cookie
    # The token exempts nothing and the cookie is not read: refused, with or without a CSRF token.
    for extra in ({}, {"X-CSRFToken": _page_csrf(client)}):
        resp = client.delete(f"/api/documents/{doc_id}", headers={**_bearer("made-up"), **extra})
        assert resp.status_code == 401, resp.status_code
        assert resp.get_json()["error"]["code"] == "unauthorized"
    # Reads too: the bogus token is the request's only credential.
    assert client.get(f"/api/documents/{doc_id}", headers=_bearer("made-up")).status_code == 401
    assert client.get(f"/api/documents/{doc_id}", headers=_bearer(token)).status_code == 200
    # Without any Authorization header, the cookie write still needs its CSRF token.
    no_csrf = client.delete(f"/api/documents/{doc_id}")
    assert no_csrf.status_code == 400 and no_csrf.get_json()["error"]["code"] == "bad_request"
    assert client.get(f"/api/documents/{doc_id}", headers=_bearer(token)).status_code == 200


def test_a_valid_token_acts_as_its_user_whatever_the_cookie(app, client, users):
    alice, bob = users.create("alice"), users.create("bob")
    doc_id = _upload_text(client, bob)
    assert users.login("alice").status_code == 302
    # bob's token with alice's cookie: bob's request, no CSRF token needed, alice's session unused.
    me = client.get("/api/me", headers=_bearer(bob)).get_json()
    assert me["username"] == "bob"
    assert client.delete(f"/api/documents/{doc_id}", headers=_bearer(bob)).status_code in (200, 204)
    assert client.get("/api/me").get_json()["username"] == "alice"
    assert client.get("/api/me", headers=_bearer(alice)).get_json()["username"] == "alice"


# -- Cache-Control -----------------------------------------------------------------------------------


def test_html_pages_are_never_cached_static_files_still_are(app, client, users):
    users.create("alice")
    assert client.get("/login").headers.get("Cache-Control") == "no-store"
    users.login("alice")
    for path in ("/documents", "/admin/", "/no-such-page"):
        resp = client.get(path)
        assert resp.mimetype == "text/html", path
        assert "no-store" in resp.headers.get("Cache-Control", ""), (path, resp.headers.get("Cache-Control"))
    css = client.get("/static/style.css")
    assert css.status_code == 200 and "no-store" not in css.headers.get("Cache-Control", "")
    css.close()


# -- Database down -----------------------------------------------------------------------------------


def test_a_database_that_goes_down_answers_503_pages_with_the_security_headers(
    app, client, users, database_url, caplog
):
    from livedoc.extensions import db

    users.create("alice")
    assert users.login("alice").status_code == 302
    assert client.get("/documents").status_code == 200  # the schema guard has seen the database
    # The database goes away under the running app: a SQLite file whose directory is gone cannot
    # be opened, the way a PostgreSQL server that is down cannot be reached.
    folder = Path(database_url.removeprefix("sqlite:///")).parent
    if not folder.is_dir():
        pytest.skip("the database is not a SQLite file here")
    moved = folder.with_name(folder.name + "-away")
    folder.rename(moved)
    try:
        with app.app_context():
            db.engine.dispose()
        caplog.set_level(logging.WARNING)
        for path in ("/documents", "/login"):
            resp = client.get(path)
            assert resp.status_code == 503, (path, resp.status_code)
            assert resp.mimetype == "text/html"
            assert b"Briefly unavailable" in resp.data
            for header in SECURITY_HEADERS:
                assert header in resp.headers, (path, header)
            assert resp.headers["Cache-Control"] == "no-store"
            assert int(resp.headers["Retry-After"]) >= 1
        api = client.get("/api/documents")
        assert api.status_code == 503 and api.get_json()["error"]["code"] == "unavailable"
        assert int(api.headers["Retry-After"]) >= 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        moved.rename(folder)


# -- Full disk ---------------------------------------------------------------------------------------


@pytest.fixture
def small_storage(storage_dir):
    """STORAGE_DIR on a 2 MB tmpfs (skipped where this process may not mount one)."""
    import subprocess

    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(storage_dir)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield storage_dir
    finally:
        subprocess.run(["umount", "-l", str(storage_dir)], check=True)


def test_a_full_disk_answers_507_and_leaves_nothing_behind(app, client, users, small_storage, redis_conn):
    from livedoc import jobs
    from livedoc.extensions import db
    from livedoc.models import Document

    token = users.create("alice")
    big = b"livedoc fills the disk\n" * (5 * 1024 * 1024 // 23)  # 5 MB of UTF-8 text
    resp = client.post(
        "/api/documents",
        headers=_bearer(token),
        data={"file": (io.BytesIO(big), "big.txt")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 507, resp.get_data(as_text=True)[:300]
    assert resp.get_json()["error"]["code"] == "insufficient_storage"
    # The HTML form says it on a page.
    users.login("alice")
    page = client.post(
        "/documents",
        data={"file": (io.BytesIO(big), "big.txt"), "csrf_token": _page_csrf(client)},
        content_type="multipart/form-data",
    )
    assert page.status_code == 507 and page.mimetype == "text/html"
    assert b"no room" in page.data
    assert [p for p in small_storage.rglob("*") if p.is_file()] == []
    with app.app_context():
        assert db.session.execute(db.select(Document)).scalars().all() == []
    assert jobs.queue(redis_conn, app.config["QUEUE_NAME"]).count == 0
    # A file that fits is still stored.
    assert _upload_text(client, token, b"small\n")


# -- RQ dashboard ------------------------------------------------------------------------------------

# All but the last answered 500 with rq-dashboard 0.9: an instance number beyond the configured Redis
# URLs (every route that takes one), a registry name it does not know, a page or page size that is
# not a number, a page size of 0. The last drew an empty page for a registry that does not exist.
RQ_BAD_URLS = [
    "/rq/5/",
    "/rq/7/view",
    "/rq/9/view/queues",
    "/rq/9/view/workers",
    "/rq/9/view/jobs",
    "/rq/9/view/job/nosuch",
    "/rq/9/data/queues.json",
    "/rq/9/data/workers.json",
    "/rq/9/data/job/nosuch.json",
    "/rq/9/data/jobs/livedoc/queued/8/asc/1.json",
    "/rq/0/data/jobs/livedoc/bogus/8/asc/1.json",
    "/rq/0/data/jobs/livedoc/queued/x/asc/1.json",
    "/rq/0/data/jobs/livedoc/queued/8/asc/x.json",
    "/rq/0/data/jobs/livedoc/queued/0/asc/1.json",
    "/rq/0/view/jobs/livedoc/bogus/8/asc/1",
]


def test_bad_rq_dashboard_urls_are_404(app, client, users):
    users.create("root", admin=True)
    users.login("root")
    codes = {path: client.get(path, follow_redirects=True).status_code for path in RQ_BAD_URLS}
    assert codes == dict.fromkeys(RQ_BAD_URLS, 404), codes
    # The good shapes still work.
    for path in (
        "/rq/",
        "/rq/0/view/jobs",
        "/rq/0/data/queues.json",
        "/rq/0/data/workers.json",
        "/rq/0/data/jobs/livedoc/failed/8/asc/1.json",
        "/rq/0/data/jobs/livedoc/queued/8/dsc/2.json",
        "/rq/0/view/jobs/livedoc/finished/8/asc/1",
    ):
        assert client.get(path).status_code == 200, path


# -- WebSocket: deeply nested JSON --------------------------------------------------------------------


def _ws_message(ws, timeout: float = 20) -> dict:
    import json
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if raw is not None:
            msg = json.loads(raw)
            if msg["type"] != "ping":
                return msg
    raise AssertionError(f"no message within {timeout} s")


@pytest.mark.live
@pytest.mark.timeout(120)
def test_a_deeply_nested_websocket_message_is_refused_cleanly(make_stack, flag_conn):
    import json

    import simple_websocket

    from livedoc import flags

    stack = make_stack()
    token = stack.user("nester")
    flags.set_override(flag_conn(stack), websocket=True)
    url = stack.base_url.replace("http://", "ws://") + "/api/ws"
    ws = simple_websocket.Client.connect(url, headers={"Authorization": f"Bearer {token}"})
    try:
        # 30,000 levels fit in the 64 KiB message cap; json.loads recursed past Python's limit.
        for deep in ("[" * 30_000, '{"a":' * 12_000, '{"type":"subscribe","documents":' + "[" * 20_000):
            ws.send(deep)
            msg = _ws_message(ws)
            assert msg["type"] == "error" and msg["code"] == "bad_message", msg
        ws.send(json.dumps({"type": "ping"}))  # the socket still serves
        assert _ws_message(ws) == {"type": "pong"}
        # A message over the cap closes the socket (1009) instead of being read.
        with pytest.raises(simple_websocket.ConnectionClosed) as closed:
            ws.send("x" * (65 * 1024))
            for _ in range(40):
                ws.receive(timeout=0.5)
        assert closed.value.reason == 1009, closed.value
    finally:
        try:
            ws.close()
        except simple_websocket.ConnectionClosed:
            pass  # the server closed it
    logs = stack.logs()
    assert "maximum recursion depth" not in logs and "Traceback" not in logs, logs[-3000:]
    assert " ERROR " not in logs and "[ERROR]" not in logs, logs[-3000:]


# -- No secret on a command line ---------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _cmdlines(pid: int) -> dict[int, bytes]:
    lines = {}
    for p in _tree(pid):
        try:
            lines[p] = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
    return lines


@pytest.mark.live
@pytest.mark.timeout(120)
def test_no_process_shows_the_redis_password_in_its_arguments(tmp_path):
    import subprocess
    import sys

    from redis import Redis
    from rq import Worker

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import devredis

    from tests.live import Stack
    from tests.support import wait_for

    secret = "redis-secret-in-the-url-7f3a"
    port = devredis.free_port()
    (tmp_path / "redis").mkdir()
    server = subprocess.Popen(
        [*devredis.server_command(port, tmp_path / "redis"), "--requirepass", secret],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    conn = Redis(port=port, password=secret)
    stack = Stack(f"redis://:{secret}@127.0.0.1:{port}/0", tmp_path / "stack")
    try:
        wait_for(conn.ping, what="redis with a password", ignore=(Exception,))
        web = stack.start_web()
        worker = stack.start_worker()
        wait_for(lambda: Worker.all(connection=conn), timeout=60, what="the worker registered")
        lines = {**_cmdlines(web.popen.pid), **_cmdlines(worker.popen.pid)}
        assert len(lines) >= 3, lines  # gunicorn's master and worker, the rq worker
        assert any(b"rq\x00worker" in line or b"/rq\x00worker" in line for line in lines.values()), lines
        leaked = {p: line for p, line in lines.items() if secret.encode() in line}
        assert not leaked, leaked
    finally:
        stack.stop()
        conn.close()
        server.terminate()
        server.wait(10)


def test_the_cli_takes_a_password_from_the_environment(app):
    from livedoc.models import User

    out = app.test_cli_runner().invoke(
        args=["users", "create", "dora"], env={"LIVEDOC_PASSWORD": "from-the-environment"}
    )
    assert out.exit_code == 0, out.output
    with app.app_context():
        assert User.by_name("dora").check_password("from-the-environment")


def test_redis_down_answers_503_pages_with_the_security_headers(
    redis_conn, storage_dir, worker_env, database_url
):
    from tests.support.app import Users, made_app

    with made_app("redis://127.0.0.1:1/0", storage_dir, database_url, RATELIMIT_ENABLED=False) as app:
        client = app.test_client()
        token = Users(app, client).create("root", admin=True)
        page = client.get("/admin/", headers=_bearer(token))  # its flags and stats live in Redis
        assert page.status_code == 503 and page.mimetype == "text/html"
        assert b"Briefly unavailable" in page.data
        for header in SECURITY_HEADERS:
            assert header in page.headers, header
        assert page.headers["Cache-Control"] == "no-store" and int(page.headers["Retry-After"]) >= 1
