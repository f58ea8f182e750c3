"""Every livedoc setting, read from the environment in one place, typed, with defaults.

The web app and the RQ worker both read their settings through `Settings.from_env()`, so one set of
environment variables configures every process on every host.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent

REALTIME_MODES = ("sse", "longpoll", "poll")


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _mode(raw: str) -> str:
    value = raw.strip().lower()
    if value not in REALTIME_MODES:
        raise ValueError(f"REALTIME_MODE must be one of {', '.join(REALTIME_MODES)}, not {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Typed settings; field names are the environment variable names."""

    SECRET_KEY: str = ""  # empty: a key is made once and kept in instance/secret_key
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    REDIS_MAX_CONNECTIONS: int = 50
    DATABASE_URL: str = ""
    STORAGE_DIR: str = str(ROOT / "var" / "storage")
    QUEUE_NAME: str = "livedoc"

    # Real-time: intervals in milliseconds, as the product card fixes them.
    SSE_POLL_INTERVAL: int = 2000
    SSE_PING_INTERVAL: int = 30000
    SSE_RETRY: int = 3000
    REALTIME_ENABLED: bool = True
    REALTIME_MODE: str = "sse"
    REALTIME_PUSH: bool = True
    LONGPOLL_MAX_WAIT: int = 25
    STATS_TTL: int = 15
    WEBSOCKET_ENABLED: bool = False

    # Uploads and conversion.
    MAX_UPLOAD_MB: int = 50
    MAX_PAGES: int = 2000
    MAX_PAGE_PIXELS: int = 40_000_000
    RENDER_DPI: int = 110
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
    # Office documents: LibreOffice on the worker host (workers/office.py), one run per document.
    OFFICE_BINARY: str = "soffice"
    OFFICE_TIMEOUT: int = 180
    OFFICE_MEMORY_MB: int = 2048
    # One document over every core (0: os.cpu_count() render processes) and every worker (page-range
    # jobs of CHUNK_PAGES pages for documents longer than that).
    RENDER_PROCESSES: int = 0
    CHUNK_PAGES: int = 200
    # Seconds a page-range job may go without storing a page before another worker takes it over.
    CHUNK_LEASE: int = 30

    # Limits.
    RATELIMIT_ENABLED: bool = True
    RATELIMIT_STREAM: str = "120 per minute"
    RATELIMIT_LOGIN: str = "20 per minute"
    RATELIMIT_UPLOAD: str = "60 per minute"
    MAX_STREAMS_PER_USER: int = 20
    MAX_DOCS_PER_STREAM: int = 50

    SESSION_COOKIE_SECURE: bool = False
    LOG_LEVEL: str = "INFO"

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
                if f.name == "REALTIME_MODE":
                    values[f.name] = _mode(raw)
                elif kind is bool:
                    values[f.name] = _bool(raw)
                elif kind is int:
                    values[f.name] = int(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"bad value for {f.name}: {exc}") from None
        return cls(**values)

    @classmethod
    def from_mapping(cls, mapping) -> Settings:
        """The settings held in a mapping of already typed values (a Flask app's config)."""
        return cls(**{f.name: mapping[f.name] for f in fields(cls) if f.name in mapping})

    def as_flask_config(self) -> dict:
        """The settings as a dict for `app.config`."""
        return asdict(self)
