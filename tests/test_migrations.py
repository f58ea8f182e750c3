"""Migrations (Flask-Migrate / Alembic): the schema comes from `flask db upgrade` and nothing else."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from livedoc import schema
from tests import dbs
from tests.support import ROOT

pytestmark = pytest.mark.db

TOKEN = "pre-migration-token-of-alice"


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url)


def _make_app(url: str, redis_url: str, storage_dir):
    from app import create_app

    return create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "REDIS_URL": redis_url,
            "STORAGE_DIR": str(storage_dir),
            "SQLALCHEMY_DATABASE_URI": url,
            "RATELIMIT_ENABLED": False,
        }
    )


def _dispose(app) -> None:
    from livedoc.extensions import db

    with app.app_context():
        db.engine.dispose()
    app.extensions["livedoc.redis"].connection_pool.disconnect()


def test_upgrade_of_an_empty_database_gives_exactly_the_models_schema(tmp_path):
    url = dbs.empty(tmp_path)
    dbs.upgrade(url)
    from livedoc.extensions import db
    from livedoc.models import ApiToken, Document, User  # noqa: F401 - registers the tables

    engine = _engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == schema.head_revision() == "0003"
        diff = compare_metadata(ctx, db.metadata)
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert tables == {"alembic_version", "user", "document", "api_token"}


def test_upgrade_from_0001_keeps_rows_and_old_tokens_work(tmp_path, redis_url, storage_dir, redis_conn):
    url = dbs.empty(tmp_path)
    dbs.upgrade(url, "0001")
    engine = _engine(url)
    created = datetime(2026, 11, 30, 12, 0, 0)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "user" (id, username, password_hash, is_admin, token_digest, created_at) '
                "VALUES (1, 'alice', 'x', false, :digest, :at), (2, 'bob', 'y', true, NULL, :at)"
            ),
            {"digest": hashlib.sha256(TOKEN.encode()).hexdigest(), "at": created},
        )
        conn.execute(
            sa.text(
                "INSERT INTO document (id, owner_id, filename, kind, size, created_at, job_id, state, "
                "last_seq, attempt, pages, error_code, error_message, error_retryable) VALUES "
                "(:id, 1, 'old.pdf', 'pdf', 1234, :at, NULL, 'complete', 9, 1, 3, NULL, NULL, NULL)"
            ),
            {"id": "a" * 32, "at": created},
        )
    dbs.upgrade(url)
    with engine.connect() as conn:
        users = conn.execute(
            sa.text('SELECT id, username, is_admin, session_version FROM "user" ORDER BY id')
        )
        assert [tuple(r) for r in users] == [(1, "alice", False, 0), (2, "bob", True, 0)]
        tokens = conn.execute(sa.text("SELECT user_id, name, digest, revoked_at FROM api_token"))
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        assert [tuple(r) for r in tokens] == [(1, "default", digest, None)]
        doc = conn.execute(sa.text("SELECT filename, state, pages, stored_bytes, last_page FROM document"))
        assert [tuple(r) for r in doc] == [("old.pdf", "complete", 3, 0, 0)]
        assert "token_digest" not in {c["name"] for c in sa.inspect(conn).get_columns("user")}
    engine.dispose()

    app = _make_app(url, redis_url, storage_dir)
    try:
        client = app.test_client()
        resp = client.get("/api/documents", headers={"Authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200
        assert [(d["id"], d["filename"], d["progress"]["state"]) for d in resp.get_json()["documents"]] == [
            ("a" * 32, "old.pdf", "complete")
        ]
        assert client.get("/api/documents", headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        _dispose(app)


def test_app_on_an_unmigrated_database_says_so_and_creates_nothing(
    tmp_path, redis_url, storage_dir, redis_conn, caplog, monkeypatch
):
    url = dbs.empty(tmp_path)
    app = _make_app(url, redis_url, storage_dir)
    try:
        client = app.test_client()
        with caplog.at_level(logging.ERROR, logger="livedoc"):
            api = client.get("/api/documents")
            page = client.get("/login")
            monkeypatch.setattr(schema, "RECHECK", 0.0)
            again = client.get("/api/documents")
        assert api.status_code == 503 and again.status_code == 503
        assert api.get_json() == {"error": {"code": "schema_outdated", "message": schema.MESSAGE}}
        assert page.status_code == 503 and page.mimetype == "text/html"
        assert "The database schema is not up to date: run `flask --app app db upgrade`." in page.get_data(
            as_text=True
        ).replace("&#96;", "`")
        said = [r.getMessage() for r in caplog.records if schema.MESSAGE in r.getMessage()]
        assert said == [f"database at revision None, code needs 0003: {schema.MESSAGE}"]
        cli = app.test_cli_runner().invoke(args=["users", "create", "x", "--password", "pass1"])
        assert cli.exit_code == 1 and schema.MESSAGE in cli.output
        engine = _engine(url)
        assert sa.inspect(engine).get_table_names() == []  # starting and serving created no table
        engine.dispose()

        dbs.upgrade(url)
        assert client.get("/api/documents").status_code == 401  # schema fine: now it asks for a login
    finally:
        _dispose(app)


def test_concurrent_first_starts_on_a_migrated_database_all_succeed(tmp_path, redis_url):
    url = dbs.fresh(tmp_path)
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": "t"}

    def create(i: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(dbs.FLASK),
                "--app",
                "app",
                "users",
                "create",
                f"user{i}",
                "--password",
                "a-long-enough-pass1",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(8)))
    assert [(r.returncode, r.stdout.strip()) for r in results] == [
        (0, f"user 'user{i}' created") for i in range(8)
    ]
    engine = _engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text('SELECT count(*) FROM "user"')).scalar() == 8
    engine.dispose()


def test_downgrade_to_0001_and_back(tmp_path):
    url = dbs.fresh(tmp_path)
    env = {**os.environ, "DATABASE_URL": url}
    out = subprocess.run(
        [str(dbs.FLASK), "--app", "app", "db", "downgrade", "0001"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    dbs.upgrade(url)
    engine = _engine(url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0003"
    engine.dispose()


def test_the_schema_guard_reads_revisions_as_alembic_does(tmp_path):
    from alembic.script import ScriptDirectory

    assert schema.head_revision() == ScriptDirectory(str(schema.MIGRATIONS)).get_current_head()
    for url, upto in (
        (dbs.empty(tmp_path / "a"), None),
        (dbs.empty(tmp_path / "b"), "0001"),
        (dbs.fresh(tmp_path / "c"), "head"),
    ):
        if upto:
            dbs.upgrade(url, upto)
        engine = _engine(url)
        with engine.connect() as conn:
            expected = MigrationContext.configure(conn).get_current_revision()
        assert (
            schema.current_revision(engine) == expected == {None: None, "0001": "0001", "head": "0003"}[upto]
        )
        engine.dispose()

    # The forms Alembic writes (annotated, or a merge's tuple), and a tree with two heads.
    versions = tmp_path / "m" / "versions"
    versions.mkdir(parents=True)
    (versions / "a.py").write_text('revision: str = "a1"\ndown_revision: str | None = None\n')
    (versions / "b.py").write_text("revision = 'b1'\ndown_revision = 'a1'\n")
    assert schema.head_revision(tmp_path / "m") == "b1"
    (versions / "c.py").write_text('revision = "c1"\ndown_revision = "a1"\n')
    with pytest.raises(RuntimeError, match="one head"):
        schema.head_revision(tmp_path / "m")
    (versions / "d.py").write_text('revision = "d1"\ndown_revision = ("b1", "c1")\n')
    assert schema.head_revision(tmp_path / "m") == "d1"


@pytest.mark.parametrize(("entry", "loaded"), [("wsgi", []), ("cli", ["alembic", "flask_migrate", "mako"])])
def test_only_the_command_line_loads_the_migration_tooling(tmp_path, entry, loaded):
    probe = (
        "import sys\n"
        + ("import wsgi\n" if entry == "wsgi" else "from app import create_app\ncreate_app()\n")
        + "print(sorted(m for m in ('alembic', 'flask_migrate', 'mako') if m in sys.modules))\n"
    )
    env = {
        **os.environ,
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never connected to: making the app opens nothing
        "DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}",
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "SECRET_KEY": "probe",
    }
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(loaded)
