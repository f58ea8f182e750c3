"""In-process app helpers: the CSRF token of a page, users created and logged in, RQ's burst mode."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis


def csrf_from(html: str) -> str:
    """The CSRF token embedded in a page."""
    match = re.search(r'name="csrf[-_]token"[^>]*(?:value|content)="([^"]+)"', html)
    assert match, "page has no CSRF token"
    return match.group(1)


class Users:
    """Creates users and logs them in (the flaskr tutorial's `auth` helper, grown up)."""

    def __init__(self, app: Flask, client: FlaskClient):
        self.app = app
        self.client = client

    def create(self, name: str = "alice", password: str | None = None, admin: bool = False) -> str:
        """Create a user and return an API token for it."""
        from livedoc.extensions import db
        from livedoc.models import User

        with self.app.app_context():
            user = User(username=name, is_admin=admin)
            user.set_password(password or f"pw-{name}")
            token = user.new_token()
            db.session.add(user)
            db.session.commit()
        return token

    def login(self, name: str = "alice", password: str | None = None):
        """Log the test client in through the real login form (CSRF token included)."""
        page = self.client.get("/login")
        token = csrf_from(page.get_data(as_text=True))
        return self.client.post(
            "/login", data={"username": name, "password": password or f"pw-{name}", "csrf_token": token}
        )


def run_jobs(connection: Redis, queue_name: str = "livedoc") -> None:
    """Run every queued job in this process until the queue is empty (RQ's burst mode)."""
    from rq import SimpleWorker

    from livedoc import jobs

    worker = SimpleWorker(
        [jobs.queue(connection, queue_name)], connection=connection, serializer=jobs.SERIALIZER
    )
    worker.work(burst=True, with_scheduler=False)


@contextlib.contextmanager
def made_app(redis_url: str, storage_dir: Path, database_url: str, **config) -> Iterator[Flask]:
    """The app on the test Redis, database and storage (plus `config`), closed afterwards: its
    Redis pool and its pooled database connections (PostgreSQL counts them)."""
    from app import create_app
    from livedoc.extensions import db

    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "REDIS_URL": redis_url,
            "STORAGE_DIR": str(storage_dir),
            "SQLALCHEMY_DATABASE_URI": database_url,
            **config,
        }
    )
    try:
        yield app
    finally:
        app.extensions["livedoc.redis"].connection_pool.disconnect()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
