"""The audit log: one JSON line per security-relevant event, with no secrets or paths."""

from __future__ import annotations

import io
import json
import logging

from tests.pdfgen import make_pdf


def _lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "livedoc.audit"]


def test_login_upload_denied_lines(app, client, users, caplog, storage_dir):
    caplog.set_level(logging.INFO, logger="livedoc.audit")
    users.create("alice")
    bob_token = users.create("bob")
    users.login("alice", "wrong-password")
    users.login("alice")
    resp = client.post(
        "/documents",
        data={"file": (io.BytesIO(make_pdf(["x"])), "secret-name.pdf"), "csrf_token": _csrf(client)},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 303
    doc_id = resp.headers["Location"].rsplit("/", 1)[-1]
    other = app.test_client()  # bob, with his token and no session
    resp = other.get(f"/api/documents/{doc_id}", headers={"Authorization": f"Bearer {bob_token}"})
    assert resp.status_code == 404

    lines = _lines(caplog)
    events = [(x["event"], x.get("user"), x.get("result")) for x in lines]
    assert ("login", "alice", "failed") in events
    assert ("login", "alice", "ok") in events
    upload = next(x for x in lines if x["event"] == "upload")
    assert upload["document"] == doc_id and upload["user"] == "alice" and upload["kind"] == "pdf"
    denied = next(x for x in lines if x["event"] == "access_denied")
    assert denied == {**denied, "document": doc_id, "user": "bob"}
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "livedoc.audit")
    for secret in ("wrong-password", "pw-alice", bob_token, str(storage_dir), "secret-name"):
        assert secret not in text


def _csrf(client) -> str:
    from tests.support.app import csrf_from

    return csrf_from(client.get("/documents").get_data(as_text=True))
