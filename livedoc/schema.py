"""Is the database migrated? Nothing creates tables as a side effect of starting: `flask db upgrade`
(Flask-Migrate, migrations/) does, and an app on a database that is behind says so.

Requests answer 503 ``schema_outdated`` until the database is at the newest revision, and the log
says it once per process; the check is repeated at most every ``RECHECK`` seconds, so the app
recovers by itself once the operator has run the upgrade, with no restart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from livedoc.errors import LivedocError

log = logging.getLogger("livedoc")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
MESSAGE = "The database schema is not up to date: run `flask --app app db upgrade`."
RECHECK = 5.0


class SchemaOutdated(LivedocError):
    """The database is missing tables or is at an older revision than the code."""

    status = 503
    code = "schema_outdated"
    message = MESSAGE


# Read without Alembic, which only the command line loads (a test keeps both readings equal).
_REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN = re.compile(r"^down_revision\b[^=\n]*=(.*)$", re.M)


def head_revision(migrations: Path = MIGRATIONS) -> str:
    """The newest revision in migrations/versions: the one no other revision follows."""
    revisions, followed = set(), set()
    for path in (migrations / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        found = _REVISION.search(text)
        if found is None:
            continue
        revisions.add(found.group(1))
        down = _DOWN.search(text)
        followed.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)) if down else [])
    heads = revisions - followed
    if len(heads) != 1:
        raise RuntimeError(f"{migrations} must have exactly one head revision, found {sorted(heads)}")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


class SchemaGuard:
    """Answers whether requests may use the database; caches "yes" for good and "no" for RECHECK s."""

    def __init__(self, engine_getter):
        self._engine = engine_getter
        self._head = head_revision()
        self._ok = False
        self._checked_at = float("-inf")
        self._warned = False
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise SchemaOutdated unless the database is at the newest revision."""
        if self._ok:
            return
        with self._lock:
            if not self._ok and time.monotonic() - self._checked_at >= RECHECK:
                self._checked_at = time.monotonic()
                try:
                    current = current_revision(self._engine())
                except SQLAlchemyError as exc:
                    log.warning("could not read the database's schema revision (%s)", exc.__class__.__name__)
                    current = None
                self._ok = current == self._head
                if not self._ok and not self._warned:
                    self._warned = True
                    log.error("database at revision %s, code needs %s: %s", current, self._head, MESSAGE)
        if not self._ok:
            raise SchemaOutdated()


def install(app: Flask, engine_getter) -> SchemaGuard:
    """Refuse requests (503) while the database is not migrated; static files stay served."""
    guard = SchemaGuard(engine_getter)
    app.extensions["livedoc.schema"] = guard

    @app.before_request
    def require_current_schema():
        from flask import request

        if request.endpoint != "static":
            guard.check()

    return guard
