"""The HTTP API through Flask's test client, on a real Redis, with jobs run by a real RQ worker."""

from __future__ import annotations

import io

from livedoc import progress
from tests.pdfgen import make_pdf
from tests.support.app import run_jobs

PDF = make_pdf(["first page", "second page", "third page"])


def _upload(client, token, data=PDF, name="doc.pdf"):
    return client.post(
        "/api/documents",
        headers={"Authorization": f"Bearer {token}"},
        data={"file": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_upload_returns_urls_and_converts(client, users, redis_conn):
    token = users.create()
    resp = _upload(client, token)
    assert resp.status_code == 201
    body = resp.get_json()
    doc_id = body["id"]
    assert body["status_url"] == f"/api/documents/{doc_id}/status"
    assert body["events_url"] == f"/api/documents/{doc_id}/events"
    assert body["viewer_url"] == f"/documents/{doc_id}"
    assert body["kind"] == "pdf"
    assert body["progress"]["state"] == "queued"
    assert body["progress"]["seq"] == 1

    run_jobs(redis_conn)

    status = client.get(body["status_url"], headers=_auth(token)).get_json()
    assert status["state"] == "complete"
    assert status["document_id"] == doc_id
    assert status["pages"] == 3 and status["percent"] == 100
    assert set(status) == {
        "seq",
        "state",
        "stage",
        "percent",
        "page",
        "pages",
        "ready",
        "message",
        "error",
        "attempt",
        "updated_at",
        "document_id",
    }

    doc = client.get(f"/api/documents/{doc_id}", headers=_auth(token)).get_json()
    assert [p["n"] for p in doc["pages"]] == [1, 2, 3]
    # Closed after use: a file response holds its file open until then.
    with client.get(doc["pages"][1]["image"], headers=_auth(token)) as image:
        assert image.status_code == 200 and image.mimetype == "image/jpeg"
        assert image.data[:3] == b"\xff\xd8\xff"
    with client.get(doc["pages"][1]["text"], headers=_auth(token)) as text:
        assert "second page" in text.get_data(as_text=True)

    listing = client.get("/api/documents", headers=_auth(token)).get_json()
    assert [(d["id"], d["progress"]["state"]) for d in listing["documents"]] == [(doc_id, "complete")]


def test_type_is_recognised_by_content_not_name(client, users):
    token = users.create()
    assert _upload(client, token, b"PK\x03\x04zipzipzip", "looks.pdf").status_code == 415
    resp = _upload(client, token, PDF, "no-extension")
    assert resp.status_code == 201 and resp.get_json()["kind"] == "pdf"
    resp = _upload(client, token, b"just some words\n", "notes.pdf")
    assert resp.status_code == 201 and resp.get_json()["kind"] == "text"
    err = _upload(client, token, b"\x00\x01\x02binary", "x.txt")
    assert err.status_code == 415
    assert err.get_json() == {
        "error": {
            "code": "unsupported_type",
            "message": "Only PDF, PNG, JPEG and plain UTF-8 text files can be converted.",
        }
    }


def test_oversized_upload_is_413_json(app, client, users):
    app.config["MAX_CONTENT_LENGTH"] = 10_000
    token = users.create()
    resp = _upload(client, token, b"%PDF-" + b"0" * 20_000)
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "too_large"


def test_empty_and_missing_file(client, users):
    token = users.create()
    assert _upload(client, token, b"").get_json()["error"]["code"] == "empty_file"
    resp = client.post(
        "/api/documents", headers=_auth(token), data={"other": "x"}, content_type="multipart/form-data"
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_upload"
    resp = client.post("/api/documents", headers=_auth(token), data=b"raw", content_type="application/pdf")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_upload"


def test_anonymous_api_is_401_and_pages_redirect_to_login(client):
    resp = client.get("/api/documents")
    assert resp.status_code == 401
    assert resp.get_json()["error"]["code"] == "unauthorized"
    resp = client.get("/documents")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login")


def test_other_users_document_is_404_like_an_absent_one(client, users, redis_conn):
    alice, bob = users.create("alice"), users.create("bob")
    doc_id = _upload(client, alice).get_json()["id"]
    for path in (
        f"/api/documents/{doc_id}",
        f"/api/documents/{doc_id}/status",
        f"/api/documents/{doc_id}/events",
    ):
        theirs = client.get(path, headers=_auth(bob))
        absent = client.get(path.replace(doc_id, "0" * 32), headers=_auth(bob))
        assert theirs.status_code == absent.status_code == 404
        assert theirs.get_json() == absent.get_json()
    assert client.post(f"/api/documents/{doc_id}/retry", headers=_auth(bob)).status_code == 404
    assert client.get(f"/documents/{doc_id}/files/page-0001.jpg", headers=_auth(bob)).status_code == 404


def test_corrupt_pdf_fails_not_retryable_and_retry_is_refused(client, users, redis_conn):
    token = users.create()
    doc_id = _upload(client, token, b"%PDF-1.4\nthis is not really a pdf").get_json()["id"]
    run_jobs(redis_conn)
    status = client.get(f"/api/documents/{doc_id}/status", headers=_auth(token)).get_json()
    assert status["state"] == "failed"
    assert status["error"]["code"] == "corrupt" and status["error"]["retryable"] is False
    resp = client.post(f"/api/documents/{doc_id}/retry", headers=_auth(token))
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "not_retryable"


def test_retry_of_a_retryable_failure_runs_a_new_attempt(app, client, users, redis_conn, storage_dir):
    token = users.create()
    doc_id = _upload(client, token).get_json()["id"]
    # The worker died before finishing: RQ has marked the job failed, progress says running.
    job_id = f"doc-{doc_id}-1"
    from rq.job import Job

    from livedoc import jobs

    job = Job.fetch(job_id, connection=redis_conn, serializer=jobs.SERIALIZER)
    job.meta[progress.META_KEY].update(state="running", stage="rendering", seq=2)
    job.save_meta()
    job.set_status("failed")
    status = client.get(f"/api/documents/{doc_id}/status", headers=_auth(token)).get_json()
    assert status["state"] == "failed" and status["error"]["code"] == "worker_lost"
    assert status["error"]["retryable"] is True and status["seq"] == 3

    resp = client.post(f"/api/documents/{doc_id}/retry", headers=_auth(token))
    assert resp.status_code == 202
    assert resp.get_json()["progress"]["state"] == "queued"
    assert resp.get_json()["progress"]["attempt"] == 2
    assert resp.get_json()["progress"]["seq"] == 4
    # A second click while the first retry is queued is refused, not queued twice.
    assert client.post(f"/api/documents/{doc_id}/retry", headers=_auth(token)).status_code == 409

    run_jobs(redis_conn)
    final = client.get(f"/api/documents/{doc_id}/status", headers=_auth(token)).get_json()
    assert final["state"] == "complete" and final["attempt"] == 2 and final["seq"] > 4


def test_status_parameters_are_validated(client, users):
    token = users.create()
    doc_id = _upload(client, token).get_json()["id"]
    url = f"/api/documents/{doc_id}/status"
    for query in (
        "after=-1",
        "after=abc",
        "after=1e9",
        "after=" + "9" * 30,
        "wait=-2",
        "wait=nan",
        "wait=inf",
        "wait=abc",
    ):
        resp = client.get(f"{url}?{query}", headers=_auth(token))
        assert resp.status_code == 400, query
        assert resp.get_json()["error"]["code"] == "bad_parameter"
    ok = client.get(f"{url}?after=0", headers=_auth(token))
    assert ok.status_code == 200 and ok.headers["X-Livedoc-Mode"] == "sse"


def test_bad_ids_are_404_before_any_lookup(client, users):
    token = users.create()
    for bad in ("x", "..%2F..%2Fetc%2Fpasswd", "A" * 32, "0" * 31, "0" * 33, "é" * 32, "1" * 5000):
        resp = client.get(f"/api/documents/{bad}/status", headers=_auth(token))
        assert resp.status_code == 404, bad
        assert resp.get_json()["error"]["code"] == "not_found"


def test_realtime_cli_overrides_and_clears(app, redis_conn):
    runner = app.test_cli_runner()
    out = runner.invoke(args=["realtime", "set", "off"])
    assert out.exit_code == 0 and '"enabled": false' in out.output and '"transport": "poll"' in out.output
    out = runner.invoke(args=["realtime", "set", "longpoll"])
    assert '"transport": "longpoll"' in out.output and '"source": "redis"' in out.output
    out = runner.invoke(args=["realtime", "clear"])
    assert '"transport": "sse"' in out.output and '"source": "env"' in out.output
    assert runner.invoke(args=["realtime", "set", "bogus"]).exit_code != 0


def test_users_cli_creates_and_issues_tokens(app, client):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["users", "create", "carol", "--password", "secret1-12345"]).exit_code == 0
    assert runner.invoke(args=["users", "create", "carol", "--password", "secret1-12345"]).exit_code != 0
    token = runner.invoke(args=["users", "token", "carol"]).output.strip()
    assert client.get("/api/documents", headers=_auth(token)).status_code == 200
    assert client.get("/api/documents", headers=_auth(token + "x")).status_code == 401
