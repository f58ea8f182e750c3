"""Every livedoc setting, read from the environment in one place, typed, with defaults.

The web app and the RQ worker both read their settings through `Settings.from_env()`, so one set of
environment variables configures every process on every host.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent

REALTIME_MODES = ("sse", "longpoll", "poll")


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return value


# The settings whose value is one of a few words.
_CHOICES = {"REALTIME_MODE": REALTIME_MODES, "S3_ADDRESSING_STYLE": ("auto", "path", "virtual")}


# The grammar of the URL settings lives here, not in the modules that use them (livedoc/storage.py,
# livedoc/redis_client.py), so that this module stays a leaf that imports nothing of livedoc.
SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a redis+sentinel:// URL."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        """Parse redis+sentinel://[[user]:password@]host:port[,host:port]/master[/db]."""
        parts = urlsplit(url)
        if parts.scheme != SENTINEL_SCHEME:
            raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
        auth, _, hosts = parts.netloc.rpartition("@")
        user, _, password = auth.partition(":")
        sentinels = []
        for item in hosts.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"sentinel addresses are host:port, not {item!r}")
            sentinels.append((host, int(port)))
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError("a sentinel URL names the master and optionally the db: .../master/0")
        return cls(
            sentinels,
            unquote(path[0]),
            int(path[1]) if len(path) == 2 else 0,
            unquote(user) or None,
            unquote(password) or None,
        )

    def limiter_uri(self) -> str:
        """The URL for Flask-Limiter (limits takes the db as an option, not in the path)."""
        auth = f"{self.username or ''}:{self.password}@" if self.password else ""
        return f"{SENTINEL_SCHEME}://{auth}{','.join(f'{h}:{p}' for h, p in self.sentinels)}/{self.master}"


def is_sentinel(url: str) -> bool:
    """True for a redis+sentinel:// URL."""
    return url.startswith(SENTINEL_SCHEME + "://")


def sentinel_url(sentinels: str, master: str, db: int = 0) -> str:
    """The redis+sentinel:// URL of REDIS_SENTINELS ("host:port,host:port") and a master name."""
    return f"{SENTINEL_SCHEME}://{sentinels.replace(' ', '')}/{master}/{db}"


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"STORAGE_URL must look like s3://bucket/prefix, not {url!r}")
    return parts.netloc, parts.path.strip("/")


def _storage_url(raw: str) -> str:
    if raw:
        parse_s3_url(raw)
    return raw


def _sentinel_redis_url(redis_url: str, sentinels: str, master: str) -> str:
    if is_sentinel(redis_url):
        db = SentinelURL.parse(redis_url).db
    else:
        path = redis_url.rsplit("/", 1)[-1] if redis_url.count("/") >= 3 else "0"
        db = int(path) if path.isdigit() else 0
    url = sentinel_url(sentinels, master, db)
    try:
        SentinelURL.parse(url)
    except ValueError as exc:
        raise ValueError(f"bad value for REDIS_SENTINELS: {exc}") from None
    return url


def _redis_url(raw: str) -> str:
    if is_sentinel(raw):
        SentinelURL.parse(raw)
    return raw


@dataclass(frozen=True)
class Settings:
    """Typed settings; field names are the environment variable names."""

    SECRET_KEY: str = ""  # empty: a key is made once and kept in instance/secret_key
    INSTANCE_DIR: str = ""  # absolute; empty: instance/ beside app.py (secret_key, default SQLite file)
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    REDIS_MAX_CONNECTIONS: int = 50
    # Redis Sentinel, as an alternative to REDIS_URL=redis+sentinel://host:port,host:port/master/db:
    # "host:port,host:port" of the sentinels (REDIS_URL's db number is kept).
    REDIS_SENTINELS: str = ""
    REDIS_SENTINEL_MASTER: str = "mymaster"
    DATABASE_URL: str = ""
    # SQLAlchemy's pool, per process. Under gevent every request is a greenlet that holds a
    # connection only while it runs queries (streams close their session before parking), so a
    # few connections serve hundreds of open streams; a greenlet finding none free waits
    # DB_POOL_TIMEOUT seconds, then the request fails with a 503.
    DB_POOL_SIZE: int = 5
    DB_MAX_OVERFLOW: int = 10
    DB_POOL_TIMEOUT: int = 10
    DB_POOL_RECYCLE: int = 1800
    DB_POOL_PRE_PING: bool = True
    STORAGE_DIR: str = str(ROOT / "var" / "storage")
    # Object storage: s3://bucket/prefix replaces STORAGE_DIR (credentials: the standard AWS chain).
    STORAGE_URL: str = ""
    S3_ENDPOINT_URL: str = ""  # MinIO, Ceph, R2, ...; empty: AWS
    S3_REGION: str = ""  # empty: the AWS chain's (AWS_DEFAULT_REGION, config files)
    S3_ADDRESSING_STYLE: str = "auto"  # auto: path-style with S3_ENDPOINT_URL, virtual-hosted on AWS
    S3_URL_EXPIRY: int = 300  # seconds a presigned page or download URL stays valid
    S3_MAX_CONNECTIONS: int = 20  # per process, shared by all greenlets
    SCRATCH_DIR: str = ""  # workers' local scratch with object storage; empty: the system temp dir
    QUEUE_NAME: str = "livedoc"

    # Real-time: intervals in milliseconds, the unit of SSE's own `retry:` field, so all of them
    # read alike and go to the client's timers as they are.
    SSE_POLL_INTERVAL: int = 2000
    SSE_PING_INTERVAL: int = 30000
    SSE_RETRY: int = 3000
    # A connection is woken for news at most once per this many ms (0: on every save); what its
    # documents saved meanwhile goes out in one write. The first save after a quiet spell goes at once.
    SSE_COALESCE_MS: int = 20
    REALTIME_ENABLED: bool = True
    REALTIME_MODE: str = "sse"
    REALTIME_PUSH: bool = True
    LONGPOLL_MAX_WAIT: int = 25
    # A long-poll that sees a change waits this many ms more and answers with everything new by then:
    # one request per change window, not per save (a 1,000-page conversion saves hundreds of times).
    LONGPOLL_WINDOW_MS: int = 1000
    # How long a page gives a new WebSocket or EventSource to deliver its first message (SSE: or to
    # open) before it abandons it for the next transport down, whatever the browser reports.
    CONNECT_TIMEOUT_MS: int = 10000
    STATS_TTL: int = 15
    WEBSOCKET_ENABLED: bool = False

    # Uploads and conversion.
    MAX_UPLOAD_MB: int = 50
    MAX_PAGES: int = 2000
    MAX_PAGE_PIXELS: int = 40_000_000
    RENDER_DPI: int = 110
    # Sharper renditions for zoomed-in readers, rendered on demand; how long a request waits for one.
    HD_DPI: int = 300
    HD_WAIT: int = 8
    # Sharper renditions of one user's pages admitted to the workers at once; the rest wait in that
    # user's turn (livedoc/fair.py), so one reader zooming through a book cannot hold every worker.
    HD_PER_USER: int = 2
    THUMB_WIDTH: int = 180
    TEXT_LINES_PER_PAGE: int = 60
    JOB_TIMEOUT: int = 600
    JOB_RETRIES: int = 3
    JOB_RETRY_INTERVALS: str = "2,10,30"
    RESULT_TTL: int = 7 * 24 * 3600
    # Seconds a job's record may be missing from Redis (restarted empty) before readers call it lost:
    # a worker rides out a restart for ~30 s (livedoc.redis_client.ResilientRedis) and then writes
    # its progress again, so an ending derived sooner could contradict the conversion finishing.
    JOB_VANISH_GRACE: int = 45
    # How often one web process (any host: a Redis lock picks it) settles every unfinished document,
    # so one whose job vanished with Redis is queued again even while nobody watches it.
    RECOVERY_INTERVAL: int = 10
    # Office documents: LibreOffice on the worker host (workers/office.py), one run per document.
    OFFICE_BINARY: str = "soffice"
    OFFICE_TIMEOUT: int = 180
    OFFICE_MEMORY_MB: int = 2048
    # The sandbox every converter that parses user files in a subprocess runs in (workers/sandbox.py):
    # bubblewrap with no network and a filesystem view of its scratch directory only. Where it cannot
    # be made, the worker fails closed (no Office). A name on PATH or a path.
    SANDBOX_BINARY: str = "bwrap"
    # Bytes a converter subprocess may write (RLIMIT_FSIZE), and what an Office zip may unpack to:
    # in total (declared sizes) and per entry as a compression ratio.
    CONVERTER_OUTPUT_MB: int = 500
    OFFICE_UNZIPPED_MB: int = 500
    OFFICE_ZIP_RATIO: int = 200
    # Address space of a work horse and its render processes (RLIMIT_AS): a hostile file can take a
    # worker's memory only up to this. 0: unlimited.
    WORKER_MEMORY_MB: int = 3072
    # Characters of text kept per page and per document (a page or document over them ends
    # `too_much_text`): they bound the text layer, the stored text and every search over it.
    MAX_PAGE_TEXT: int = 100_000
    MAX_DOCUMENT_TEXT: int = 20_000_000
    # One document over every core (0: os.cpu_count() render processes) and every worker (page-range
    # jobs of CHUNK_PAGES pages for documents longer than that).
    RENDER_PROCESSES: int = 0
    CHUNK_PAGES: int = 200
    # Milliseconds between progress saves while pages arrive faster than that from several render
    # processes (each save is an event to every viewer; a person sees no difference under ~0.1 s).
    PROGRESS_INTERVAL: int = 50
    # Seconds a page-range job may go without storing a page before another worker takes it over.
    CHUNK_LEASE: int = 30
    # Niceness of conversion workers (and their work horses and render processes): on a host shared
    # with the web they give way to the streams. 0: as started.
    WORKER_NICE: int = 10

    # Limits.
    RATELIMIT_ENABLED: bool = True
    RATELIMIT_STREAM: str = "120 per minute"
    RATELIMIT_LOGIN: str = "20 per minute"
    RATELIMIT_UPLOAD: str = "60 per minute"
    RATELIMIT_SEARCH: str = "30 per minute"  # searches per user
    # Milliseconds of work one search may take before it answers with what it found so far.
    SEARCH_BUDGET_MS: int = 2000
    SEARCH_CONCURRENCY: int = 2  # searches running at once per web process (beyond: wait, then 429)
    MAX_STREAMS_PER_USER: int = 20
    MAX_DOCS_PER_STREAM: int = 50

    # Quotas per user: documents kept, megabytes stored (originals + output), conversions in flight.
    QUOTA_DOCUMENTS: int = 1000
    QUOTA_MB: int = 2000
    MAX_CONVERSIONS_PER_USER: int = 10

    # Abuse: proxies, sessions, origins, tokens.
    TRUSTED_PROXIES: int = 0  # reverse proxies in front of gunicorn; 0: X-Forwarded-* are ignored
    # Failed logins per (user name, client address); then, for each name over every address, a slower
    # limit that only slows clients which have failed for that name (a correct password from a client
    # that has not failed always logs in: nobody can lock a user out).
    RATELIMIT_LOGIN_USER: str = "10 per minute"
    RATELIMIT_LOGIN_NAME: str = "100 per hour"
    PERMANENT_SESSION_LIFETIME: int = 14 * 24 * 3600  # seconds
    HSTS_MAX_AGE: int = 365 * 24 * 3600  # sent over HTTPS only
    ALLOWED_ORIGINS: str = ""  # comma-separated extra origins for the WebSocket handshake
    WS_MESSAGE_RATE: int = 20  # messages one WebSocket may send per 10 seconds
    METRICS_TOKEN: str = ""  # a read-only bearer token for /metrics (empty: admins only)
    MIN_PASSWORD_LENGTH: int = 12

    SESSION_COOKIE_SECURE: bool = False
    LOG_LEVEL: str = "INFO"

    # The processes: gunicorn (gunicorn.conf.py) and the worker's command line (scripts/worker).
    BIND: str = "127.0.0.1:8000"
    WEB_CONCURRENCY: int = 1
    WORKER_CONNECTIONS: int = 10000  # open streams (greenlets and sockets) per gunicorn worker
    GRACEFUL_TIMEOUT: int = 10
    ACCESS_LOG: str = ""  # a path, or "-" for stderr; empty: no access log
    JOB_MONITORING_INTERVAL: int = 10  # s: how often a busy worker checks on its work horse (and beats)
    # s: how often the fleet (one worker at a time) looks for the jobs of dead workers; below
    # WORKER_TTL - 15, so every idle worker's wake-up may do it.
    MAINTENANCE_INTERVAL: int = 10
    # s: RQ's worker_ttl. A worker and the job it runs count as dead this long after their last
    # heartbeat, and an idle worker wakes every WORKER_TTL - 15 s to beat and to run maintenance: a
    # dead worker is noticed within WORKER_TTL + that (~45 s), capabilities Redis lost come back
    # within ~15 s. RQ's default, 420, took ~8 minutes.
    WORKER_TTL: int = 30
    # Set (to an empty directory) with several gunicorn workers per host; prometheus_client reads
    # the variable itself, livedoc reads it here to merge the processes' metrics.
    PROMETHEUS_MULTIPROC_DIR: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from environment variables, falling back to the defaults."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            if f.name not in env:
                continue
            raw = env[f.name]
            kind = type(getattr(cls, f.name))
            try:
                if f.name in _CHOICES:
                    values[f.name] = _choice(f.name, raw, _CHOICES[f.name])
                elif f.name == "REDIS_URL":
                    values[f.name] = _redis_url(raw)
                elif f.name == "STORAGE_URL":
                    values[f.name] = _storage_url(raw.strip())
                elif kind is bool:
                    values[f.name] = _bool(raw)
                elif kind is int:
                    values[f.name] = int(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"bad value for {f.name}: {exc}") from None
        if values.get("REDIS_SENTINELS"):
            master = values.get("REDIS_SENTINEL_MASTER", cls.REDIS_SENTINEL_MASTER)
            values["REDIS_URL"] = _sentinel_redis_url(
                values.get("REDIS_URL", cls.REDIS_URL), values["REDIS_SENTINELS"], master
            )
        return cls(**values)

    @classmethod
    def from_mapping(cls, mapping) -> Settings:
        """The settings held in a mapping of already typed values (a Flask app's config)."""
        return cls(**{f.name: mapping[f.name] for f in fields(cls) if f.name in mapping})

    def as_flask_config(self) -> dict:
        """The settings as a dict for `app.config`."""
        return asdict(self)


if __name__ == "__main__":
    # `python -m config NAME...`: the settings for shell scripts (scripts/worker), one per line, so
    # their defaults live here too.
    import sys

    _settings = Settings.from_env()
    for _name in sys.argv[1:]:
        print(getattr(_settings, _name))
