"""Login sessions: checking a login at a constant cost, a fresh session per login, and ending all of
a user's sessions at once.

The id flask-login keeps in the session cookie (and in a remember-me cookie) is
"<user id>:<session version>"; bumping `User.session_version` (logout, a password change) makes every
cookie issued before it name a version that no longer exists, on every host, at the next request.
"""

from __future__ import annotations

from functools import lru_cache

from flask import session
from flask_login import login_user
from werkzeug.security import check_password_hash, generate_password_hash

from livedoc.extensions import db
from livedoc.models import User


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Hashed with the same method as real passwords, so checking it costs what a real check costs.
    return generate_password_hash("livedoc: no such user")


def load(stored_id: str) -> User | None:
    """The user a session id names, if the session version is still current."""
    uid, sep, version = stored_id.partition(":")
    if not sep or not uid.isdigit() or not version.isdigit() or len(stored_id) > 40:
        return None
    user = db.session.get(User, int(uid))
    if user is None or (user.session_version or 0) != int(version):
        return None
    return user


def authenticate(username: str, password: str) -> User | None:
    """The user when the password is theirs; an unknown name costs the same time as a wrong password."""
    user = User.by_name(username) if username else None
    if user is None:
        check_password_hash(_dummy_hash(), password)
        return None
    return user if user.check_password(password) else None


def start(user: User) -> None:
    """Log the user in on a fresh session: nothing from before the login survives it."""
    session.clear()
    session.permanent = True  # PERMANENT_SESSION_LIFETIME bounds the cookie
    login_user(user)


def end_all(user: User) -> None:
    """Invalidate every session and remember cookie of the user, on every host (caller commits)."""
    user.session_version = (user.session_version or 0) + 1
