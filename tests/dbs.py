"""Databases for tests, made the way production makes them: by migrating (`flask db upgrade`).

Migrating for every test would be slow, so the first request in a session upgrades one template
database and every test gets a copy: a file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on
PostgreSQL. TEST_DATABASE_URL (a PostgreSQL server URL; scripts/test starts a throwaway cluster)
selects PostgreSQL; without it, SQLite.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"

_template: str | None = None
_tmp: Path | None = None
_counter = itertools.count(1)
# Fixtures may start stacks from background threads (tests/test_faults.py): one template only.
_lock = threading.Lock()


def server_url() -> str | None:
    """The PostgreSQL server the tests use, or None for SQLite."""
    return os.environ.get("TEST_DATABASE_URL") or None


def is_postgres() -> bool:
    """True when the tests run against PostgreSQL."""
    return server_url() is not None


def upgrade(url: str, *args: str) -> subprocess.CompletedProcess:
    """`flask --app app db upgrade` on the database at url (raises if it fails)."""
    env = {**os.environ, "DATABASE_URL": url}
    out = subprocess.run(
        [str(FLASK), "--app", "app", "db", "upgrade", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"db upgrade failed: {out.stderr[-2000:]}")
    return out


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def admin_execute(sql: str) -> None:
    """Run one statement on the PostgreSQL server's maintenance database (autocommit)."""
    import psycopg

    dsn = server_url().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def _tmp_dir() -> Path:
    global _tmp
    if _tmp is None:
        _tmp = Path(tempfile.mkdtemp(prefix="livedoc-db-"))
        atexit.register(shutil.rmtree, _tmp, True)
    return _tmp


def template() -> str:
    """The URL of this session's migrated template database (made on first use)."""
    global _template
    with _lock:
        if _template is None:
            if is_postgres():
                name = f"livedoc_tmpl_{os.getpid()}"
                admin_execute(f"DROP DATABASE IF EXISTS {name}")
                admin_execute(f"CREATE DATABASE {name}")
                url = _with_database(server_url(), name)
            else:
                url = f"sqlite:///{_tmp_dir() / 'template.db'}"
            upgrade(url)
            _template = url
        return _template


def _new_postgres(prefix: str, template_name: str | None = None) -> str:
    """Create a PostgreSQL database of this process (a copy of template_name, when given); its URL."""
    name = f"livedoc_{prefix}{os.getpid()}_{next(_counter)}"
    admin_execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template_name}" if template_name else ""))
    return _with_database(server_url(), name)


def _sqlite_file(directory: Path | None) -> Path:
    """Where a new SQLite database goes: livedoc.db in `directory` (created), else in a fresh one."""
    directory = Path(directory) if directory else _tmp_dir() / f"db{next(_counter)}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / "livedoc.db"


def fresh(directory: Path | None = None) -> str:
    """The URL of a new, migrated, empty database (in `directory` on SQLite)."""
    source = template()
    if is_postgres():
        return _new_postgres("t", source.rpartition("/")[2])
    target = _sqlite_file(directory)
    shutil.copyfile(source.removeprefix("sqlite:///"), target)
    return f"sqlite:///{target}"


def empty(directory: Path | None = None) -> str:
    """The URL of a new database with no tables at all (not migrated)."""
    if is_postgres():
        return _new_postgres("e")
    return f"sqlite:///{_sqlite_file(directory)}"
