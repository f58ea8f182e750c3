"""livedoc: create_app() and the Flask CLI (users, realtime flags)."""
from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import click
from flask import Flask, Request, current_app, redirect, request, url_for
from flask.cli import AppGroup
from werkzeug.exceptions import BadRequest, HTTPException

from config import Settings
from livedoc import capabilities, flags
from livedoc.errors import Unauthorized, error_response, register_error_handlers, wants_json
from livedoc.extensions import csrf, db, limiter, login_manager
from livedoc.hub import StreamHub
from livedoc.models import User
from livedoc.redis_client import connect
from livedoc.storage import open_storage
from livedoc.web import redis_conn

# Only the app's own files; inline script/style are refused, pages embed data as data-* attributes.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'")



def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: defaults, then the environment, then `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    app.request_class = LivedocRequest
    # "/api/documents//status" is a bad id, not a URL to redirect: answer it with our JSON 404.
    app.url_map.merge_slashes = False
    app.config.from_mapping(Settings.from_env().as_flask_config())
    if test_config:
        app.config.update(test_config)
    cfg = app.config
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not cfg["SECRET_KEY"]:
        cfg["SECRET_KEY"] = _instance_secret(Path(app.instance_path))
    cfg.setdefault("SQLALCHEMY_DATABASE_URI",
                   cfg["DATABASE_URL"] or f"sqlite:///{Path(app.instance_path) / 'livedoc.db'}")
    # Room for the multipart envelope around a file of exactly MAX_UPLOAD_MB. (Flask's defaults hold
    # the key with None, so setdefault would never set it.)
    if cfg.get("MAX_CONTENT_LENGTH") is None:
        cfg["MAX_CONTENT_LENGTH"] = cfg["MAX_UPLOAD_MB"] * 1024 * 1024 + 64 * 1024
    cfg.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,
        RATELIMIT_STORAGE_URI=cfg["REDIS_URL"],
        RATELIMIT_HEADERS_ENABLED=False,  # Retry-After is set by our error handler (livedoc.errors)
        RATELIMIT_SWALLOW_ERRORS=True,  # Redis down: let requests through rather than fail them
        RATELIMIT_STRATEGY="fixed-window",  # one INCR per hit; moving windows cost a Lua script
        RQ_DASHBOARD_REDIS_URL=cfg["REDIS_URL"],
    )
    app.extensions["livedoc.storage"] = open_storage(Settings.from_mapping(cfg))
    logging.basicConfig(level=cfg["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s %(message)s")

    db.init_app(app)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"

    conn = connect(cfg["REDIS_URL"], max_connections=cfg["REDIS_MAX_CONNECTIONS"])
    app.extensions["livedoc.redis"] = conn
    app.extensions["livedoc.hub"] = StreamHub(
        conn, flags.RealtimeFlags.from_config(cfg), cfg["SSE_POLL_INTERVAL"] / 1000,
        stats_ttl=cfg["STATS_TTL"], vanish_grace=cfg["JOB_VANISH_GRACE"])

    # Pages hand their script the real-time settings: {{ realtime_client(flags)|tojson }}.
    app.jinja_env.globals["realtime_client"] = lambda f: flags.client_settings(f, app.config)
    app.jinja_env.globals["office_accept"] = lambda: capabilities.OFFICE_ACCEPT if capabilities.offered(
        app.extensions["livedoc.redis"], "office") else ""
    register_error_handlers(app)
    _register_auth(app)
    _register_security(app)

    from blueprints import admin, auth, documents, realtime

    app.register_blueprint(auth.bp)
    app.register_blueprint(documents.bp)
    app.register_blueprint(realtime.bp)
    app.register_blueprint(admin.bp)
    admin.mount_rq_dashboard(app)

    with app.app_context():
        db.create_all()

    app.cli.add_command(users_cli)
    app.cli.add_command(realtime_cli)
    return app


class LivedocRequest(Request):
    """A request whose unreadable body (a cut or malformed chunked upload) is a 400, not a 500."""

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except HTTPException:
            raise  # 413 and friends are already the right answer
        except Exception:  # noqa: BLE001
            # The WSGI server's body reader fails with its own types (gunicorn: NoMoreData, an
            # OSError, and InvalidChunkSize, a plain Exception); Werkzeug only expects ValueError.
            # A body that cannot be read is the client's malformed request.
            raise BadRequest("The request body is incomplete or malformed.") from None


def _instance_secret(instance: Path) -> str:
    """A random key kept in instance/secret_key; several hosts must share SECRET_KEY instead."""
    path = instance / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _register_auth(app: Flask) -> None:
    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        return db.session.get(User, int(user_id)) if user_id.isdigit() else None

    @login_manager.request_loader
    def load_user_from_token(req) -> User | None:
        header = req.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return User.by_token(token.strip())

    @login_manager.unauthorized_handler
    def unauthorized():
        if wants_json():
            err = Unauthorized()
            return error_response(err.status, err.code, err.message)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _register_security(app: Flask) -> None:
    @app.before_request
    def check_csrf():
        # Browsers cannot attach an Authorization header cross-site, so token requests need no
        # CSRF token; cookie-authenticated writes always do.
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        if request.headers.get("Authorization", "").lower().startswith("bearer "):
            return None
        if request.blueprint == "rq_dashboard":
            return None  # its JS cannot send our token: blueprints/admin.py checks the origin instead
        csrf.protect()
        return None

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        if request.path.startswith("/api/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp


@click.group("users", cls=AppGroup)
def users_cli() -> None:
    """Manage user accounts."""


@users_cli.command("create")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--admin", is_flag=True, help="Allow the RQ dashboard, stats and flags.")
@click.option("--update", is_flag=True, help="Reset the password (and admin flag) if the user exists.")
def users_create(name: str, password: str, admin: bool, update: bool) -> None:
    """Create a user."""
    if not name or len(name) > 64 or not name.isprintable():
        raise click.BadParameter("the name must be 1-64 printable characters")
    if len(password) < 4:
        raise click.BadParameter("the password must have at least 4 characters")
    user = User.by_name(name)
    if user is not None and not update:
        raise click.ClickException(f"user {name!r} exists (use --update to reset it)")
    if user is None:
        user = User(username=name)
        db.session.add(user)
    user.set_password(password)
    user.is_admin = admin
    db.session.commit()
    click.echo(f"user {name!r} {'updated' if update else 'created'}{' (admin)' if admin else ''}")


@users_cli.command("token")
@click.argument("name")
def users_token(name: str) -> None:
    """Issue a new API token for a user (the old one stops working) and print it."""
    user = User.by_name(name)
    if user is None:
        raise click.ClickException(f"no user {name!r}")
    token = user.new_token()
    db.session.commit()
    click.echo(token)


@click.group("realtime", cls=AppGroup)
def realtime_cli() -> None:
    """Show or override the real-time flags on every host, without a restart."""


@realtime_cli.command("show")
def realtime_show() -> None:
    """Print the flags in force."""
    defaults = flags.RealtimeFlags.from_config(current_app.config)
    click.echo(json.dumps(flags.current(redis_conn(), defaults).as_dict()))


@realtime_cli.command("set")
@click.argument("mode", type=click.Choice(flags.CHOICES))
@click.option("--push/--no-push", default=None, help="Pub/sub wake-up on or off.")
@click.option("--websocket/--no-websocket", default=None, help="WebSocket transport on or off.")
def realtime_set(mode: str, push: bool | None, websocket: bool | None) -> None:
    """Override the mode: sse, longpoll, poll, or off (plain polling)."""
    flags.set_override(redis_conn(), mode=mode, push=push, websocket=websocket)
    realtime_show.callback()


@realtime_cli.command("clear")
def realtime_clear() -> None:
    """Drop the override: the environment's settings apply again."""
    flags.clear_override(redis_conn())
    realtime_show.callback()
