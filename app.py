"""livedoc: create_app() and the Flask CLI (users, realtime flags)."""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from flask import Flask, Request, current_app, g, has_request_context, redirect, request, url_for
from flask.cli import AppGroup, with_appcontext
from werkzeug.exceptions import BadRequest, HTTPException

from config import Settings
from livedoc import capabilities, flags, proxies, schema, sessions
from livedoc.appctx import redis_conn
from livedoc.audit import audit
from livedoc.errors import Unauthorized, error_response, register_error_handlers, wants_json
from livedoc.extensions import csrf, db, limiter, login_manager
from livedoc.hub import StreamHub
from livedoc.models import User
from livedoc.redis_client import SentinelURL, connect, is_sentinel
from livedoc.storage import open_storage

# Only the app's own files; inline script/style are refused, pages embed data as data-* attributes.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
)


def content_security_policy(storage_origin: str | None) -> str:
    """The CSP; page images (and files scripts fetch) may come from the object store's origin."""
    if storage_origin is None:
        return CSP
    return CSP.replace("img-src 'self' data:", f"img-src 'self' data: {storage_origin}").replace(
        "connect-src 'self'", f"connect-src 'self' {storage_origin}"
    )


def create_app(test_config: dict | None = None, *, cli: bool = True) -> Flask:
    """Build the app: defaults, then the environment, then `test_config` (`cli`: with `flask db`)."""
    # INSTANCE_DIR is read first: Flask fixes the instance path when the app object is made.
    instance_dir = (test_config or {}).get("INSTANCE_DIR") or Settings.from_env().INSTANCE_DIR
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_dir or None)
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
    cfg.setdefault(
        "SQLALCHEMY_DATABASE_URI",
        cfg["DATABASE_URL"] or f"sqlite:///{Path(app.instance_path) / 'livedoc.db'}",
    )
    cfg.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(cfg))
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
        **_limiter_storage(cfg["REDIS_URL"]),
        RATELIMIT_HEADERS_ENABLED=False,  # Retry-After is set by our error handler (livedoc.errors)
        RATELIMIT_SWALLOW_ERRORS=True,  # Redis down: let requests through rather than fail them
        RATELIMIT_STRATEGY="fixed-window",  # one INCR per hit; moving windows cost a Lua script
        RQ_DASHBOARD_REDIS_URL=cfg["REDIS_URL"],  # it understands redis+sentinel:// URLs too
        # Else rq-dashboard copies our REDIS_SENTINELS into its own (unused) option, with a warning.
        RQ_DASHBOARD_REDIS_SENTINELS=None,
    )
    app.extensions["livedoc.storage"] = open_storage(Settings.from_mapping(cfg))
    app.extensions["livedoc.csp"] = content_security_policy(app.extensions["livedoc.storage"].origin())
    logging.basicConfig(level=cfg["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s %(message)s")

    db.init_app(app)
    if cli:
        # Only the command line migrates: Alembic and Mako cost a web process ~11 MB.
        from flask_migrate import Migrate

        Migrate(app, db, directory=str(schema.MIGRATIONS))
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"

    conn = connect(cfg["REDIS_URL"], max_connections=cfg["REDIS_MAX_CONNECTIONS"])
    app.extensions["livedoc.redis"] = conn
    app.extensions["livedoc.hub"] = StreamHub(
        conn,
        flags.RealtimeFlags.from_config(cfg),
        cfg["SSE_POLL_INTERVAL"] / 1000,
        stats_ttl=cfg["STATS_TTL"],
        vanish_grace=cfg["JOB_VANISH_GRACE"],
        coalesce=cfg["SSE_COALESCE_MS"] / 1000,
    )

    # Pages hand their script the real-time settings: {{ realtime_client(flags)|tojson }}.
    app.jinja_env.globals["realtime_client"] = lambda f: flags.client_settings(f, app.config)
    app.jinja_env.globals["office_accept"] = lambda: (
        capabilities.OFFICE_ACCEPT if capabilities.offered(app.extensions["livedoc.redis"], "office") else ""
    )
    register_error_handlers(app)
    # Before the auth hooks: loading a user needs the tables.
    schema.install(app, lambda: db.engine)
    proxies.init_app(app)
    _register_auth(app)
    _register_security(app)

    from blueprints import admin, apidoc, auth, documents, realtime

    app.register_blueprint(auth.bp)
    app.register_blueprint(documents.bp)
    app.register_blueprint(realtime.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(apidoc.bp)
    admin.mount_rq_dashboard(app)

    app.cli.add_command(users_cli)
    app.cli.add_command(realtime_cli)
    return app


def _engine_options(cfg) -> dict:
    """The database pool from the DB_POOL_* settings (PostgreSQL: postgresql+psycopg://...)."""
    return {
        "pool_size": cfg["DB_POOL_SIZE"],
        "max_overflow": cfg["DB_MAX_OVERFLOW"],
        "pool_timeout": cfg["DB_POOL_TIMEOUT"],
        "pool_recycle": cfg["DB_POOL_RECYCLE"],
        "pool_pre_ping": cfg["DB_POOL_PRE_PING"],
    }


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


def _limiter_storage(redis_url: str) -> dict:
    """Flask-Limiter's storage settings for REDIS_URL (plain or Sentinel)."""
    if not is_sentinel(redis_url):
        return {"RATELIMIT_STORAGE_URI": redis_url}
    spec = SentinelURL.parse(redis_url)
    return {"RATELIMIT_STORAGE_URI": spec.limiter_uri(), "RATELIMIT_STORAGE_OPTIONS": {"db": spec.db}}


def _instance_secret(instance: Path) -> str:
    """A random key kept in instance/secret_key; several hosts must share SECRET_KEY instead."""
    path = instance / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _bearer_token(req: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None without one."""
    scheme, sep, token = req.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and sep else None


def _register_auth(app: Flask) -> None:
    # A request that names a bearer token is that token's alone: the session cookie is not read,
    # so a made-up token cannot borrow the browser's session (nor its CSRF exemption, in check_csrf).
    # Not a user's token (a typo, a revoked one, the METRICS_TOKEN): the request is anonymous.
    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        if has_request_context() and _bearer_token(request) is not None:
            return None
        return sessions.load(user_id)

    @login_manager.request_loader
    def load_user_from_token(req: Request) -> User | None:
        token = _bearer_token(req)
        return User.by_token(token) if token is not None else None

    @app.before_request
    def authenticate_bearer():
        token = _bearer_token(request)
        if token is None:
            return None
        # Decided before any hook or view asks who the user is (check_csrf needs it).
        g.token_user = User.by_token(token)
        g._login_user = g.token_user or login_manager.anonymous_user()  # where flask-login keeps it
        return None

    @login_manager.unauthorized_handler
    def unauthorized():
        if wants_json():
            err = Unauthorized()
            return error_response(err.status, err.code, err.message)
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _register_security(app: Flask) -> None:
    @app.before_request
    def check_csrf():
        # Browsers cannot attach an Authorization header cross-site, so requests a valid API token
        # authenticated need no CSRF token (their cookie is ignored); every other write does.
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        if "token_user" in g:
            if g.token_user is not None:
                return None
            # A script whose token was revoked or mistyped is told that, not that a CSRF token is
            # missing; the write is refused either way.
            raise Unauthorized("The API token is not valid (revoked, expired or mistyped).")
        if request.blueprint == "rq_dashboard":
            return None  # its JS cannot send our token: blueprints/admin.py checks the origin instead
        csrf.protect()
        return None

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("Content-Security-Policy", app.extensions["livedoc.csp"])
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        # Pages carry a user's names, documents and CSRF token: no browser or proxy may keep them.
        if request.path.startswith("/api/") or resp.mimetype == "text/html":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp


@click.group("users", cls=AppGroup)
@with_appcontext
def users_cli() -> None:
    """Manage user accounts."""
    try:
        current_app.extensions["livedoc.schema"].check()
    except schema.SchemaOutdated as exc:
        raise click.ClickException(exc.message) from None


def _check_password(password: str) -> None:
    minimum = current_app.config["MIN_PASSWORD_LENGTH"]
    if len(password) < minimum:
        raise click.BadParameter(f"the password must have at least {minimum} characters")


def _user_named(name: str) -> User:
    user = User.by_name(name)
    if user is None:
        raise click.ClickException(f"no user {name!r}")
    return user


# LIVEDOC_PASSWORD: scripts can hand the password over without putting it in `ps` (arguments are
# public on a host; a process's environment is its user's).
@users_cli.command("create")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, envvar="LIVEDOC_PASSWORD")
@click.option("--admin", is_flag=True, help="Allow the RQ dashboard, stats and flags.")
@click.option("--update", is_flag=True, help="Reset the password (and admin flag) if the user exists.")
def users_create(name: str, password: str, admin: bool, update: bool) -> None:
    """Create a user."""
    if not name or len(name) > 64 or not name.isprintable():
        raise click.BadParameter("the name must be 1-64 printable characters")
    _check_password(password)
    user = User.by_name(name)
    if user is not None and not update:
        raise click.ClickException(f"user {name!r} exists (use --update to reset it)")
    if user is None:
        user = User(username=name)
        db.session.add(user)
    elif not user.check_password(password):
        sessions.end_all(user)  # a reset password logs the old holder out everywhere
    user.set_password(password)
    user.is_admin = admin
    db.session.commit()
    click.echo(f"user {name!r} {'updated' if update else 'created'}{' (admin)' if admin else ''}")


@users_cli.command("passwd")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, envvar="LIVEDOC_PASSWORD")
def users_passwd(name: str, password: str) -> None:
    """Change a user's password; every existing session of the user ends."""
    _check_password(password)
    user = _user_named(name)
    user.set_password(password)
    sessions.end_all(user)
    db.session.commit()
    audit("password_changed", user=name, via="cli")
    click.echo(f"password of {name!r} changed; its sessions are logged out")


@users_cli.command("token")
@click.argument("name")
@click.option("--name", "token_name", default="default", show_default=True, help="A label for the token.")
@click.option("--expires-days", type=click.IntRange(min=1), default=None, help="Days until it expires.")
def users_token(name: str, token_name: str, expires_days: int | None) -> None:
    """Issue a new API token for a user and print it (it is shown only this once)."""
    user = _user_named(name)
    expires_at = (
        datetime.now(UTC).replace(tzinfo=None) + timedelta(days=expires_days) if expires_days else None
    )
    token = user.new_token(token_name, expires_at)
    db.session.commit()
    audit("token_issued", user=name, token_name=token_name, expires_at=expires_at)
    click.echo(token)


@users_cli.command("tokens")
@click.argument("name")
def users_tokens(name: str) -> None:
    """List a user's API tokens: id, name, created, expires, revoked (never the token itself)."""
    user = _user_named(name)
    click.echo("id\tname\tcreated_at\texpires_at\trevoked_at")
    for row in sorted(user.tokens, key=lambda t: t.id):
        click.echo(
            "\t".join(
                str(v) if v is not None else "-"
                for v in (
                    row.id,
                    row.name,
                    row.created_at.replace(microsecond=0),
                    row.expires_at and row.expires_at.replace(microsecond=0),
                    row.revoked_at and row.revoked_at.replace(microsecond=0),
                )
            )
        )


@users_cli.command("revoke-token")
@click.argument("name")
@click.argument("token_id", type=int)
def users_revoke_token(name: str, token_id: int) -> None:
    """Revoke one API token of a user (by the id `users tokens` shows); it answers 401 from now on."""
    user = _user_named(name)
    row = next((t for t in user.tokens if t.id == token_id), None)
    if row is None:
        raise click.ClickException(f"user {name!r} has no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC).replace(tzinfo=None)
        db.session.commit()
    audit("token_revoked", user=name, token_id=token_id)
    click.echo(f"token {token_id} of {name!r} revoked")


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
