"""Users and documents, stored through SQLAlchemy."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from flask_login import UserMixin
from werkzeug.security import check_password_hash, generate_password_hash

from livedoc.extensions import db
from livedoc.ids import new_doc_id


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class User(UserMixin, db.Model):
    """An account: a password for the browser, an optional API token for scripts."""

    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(64), unique=True, nullable=False)
    password_hash = db.Column(db.String(256), nullable=False)
    is_admin = db.Column(db.Boolean, nullable=False, default=False)
    created_at = db.Column(db.DateTime, nullable=False, default=_now)
    # Bumped by logout and password changes; a session cookie carries the version it was made
    # with, so every older cookie of this user stops working at once, on every host.
    session_version = db.Column(db.Integer, nullable=False, default=0, server_default="0")

    tokens = db.relationship("ApiToken", back_populates="user", cascade="all, delete-orphan", lazy="select")

    def get_id(self) -> str:
        """What flask-login stores in session and remember cookies (see livedoc.sessions)."""
        return f"{self.id}:{self.session_version or 0}"

    def set_password(self, password: str) -> None:
        """Store a salted hash of the password."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """True when the password matches."""
        return check_password_hash(self.password_hash, password)

    def new_token(self, name: str = "default", expires_at: datetime | None = None) -> str:
        """Issue a new API token (only its digest is kept) and return it."""
        token = secrets.token_urlsafe(32)
        self.tokens.append(ApiToken(name=name[:64], digest=_token_digest(token), expires_at=expires_at))
        return token

    @classmethod
    def by_token(cls, token: str) -> User | None:
        """The user holding this API token, if it is neither revoked nor expired."""
        if not token or len(token) > 200:
            return None
        row = db.session.execute(
            db.select(ApiToken).filter_by(digest=_token_digest(token))
        ).scalar_one_or_none()
        if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= _now()):
            return None
        return row.user

    @classmethod
    def by_name(cls, username: str) -> User | None:
        """The user with this name, if any."""
        return db.session.execute(db.select(cls).filter_by(username=username)).scalar_one_or_none()


class Document(db.Model):
    """An upload and what is known of its conversion once it has ended."""

    id = db.Column(db.String(32), primary_key=True, default=new_doc_id)
    owner_id = db.Column(db.Integer, db.ForeignKey("user.id"), nullable=False, index=True)
    filename = db.Column(db.String(255), nullable=False)
    kind = db.Column(db.String(16), nullable=False)
    size = db.Column(db.Integer, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=_now)
    job_id = db.Column(db.String(64), nullable=True)
    # The ending of the last attempt, copied from the job's progress once a reader sees it, so the
    # document outlives its RQ job (RQ expires finished jobs).
    state = db.Column(db.String(16), nullable=False, default="queued")
    last_seq = db.Column(db.BigInteger, nullable=False, default=0)  # vanished endings: ms since the epoch
    attempt = db.Column(db.Integer, nullable=False, default=1)
    pages = db.Column(db.Integer, nullable=False, default=0)
    error_code = db.Column(db.String(64), nullable=True)
    error_message = db.Column(db.String(500), nullable=True)
    error_retryable = db.Column(db.Boolean, nullable=True)
    # Bytes this document holds in storage (original plus output), counted against QUOTA_MB.
    stored_bytes = db.Column(db.BigInteger, nullable=False, default=0, server_default="0")
    # The page the owner last read, restored when the viewer is opened again (0: never opened).
    last_page = db.Column(db.Integer, nullable=False, default=0, server_default="0")

    owner = db.relationship(User, backref=db.backref("documents", lazy="dynamic"))


class ApiToken(db.Model):
    """An API token of a user: hashed, named, revocable, optionally expiring."""

    __tablename__ = "api_token"

    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("user.id", ondelete="CASCADE"), nullable=False, index=True)
    name = db.Column(db.String(64), nullable=False, default="default")
    digest = db.Column(db.String(64), unique=True, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=_now)
    expires_at = db.Column(db.DateTime, nullable=True)
    revoked_at = db.Column(db.DateTime, nullable=True)

    user = db.relationship(User, back_populates="tokens")
