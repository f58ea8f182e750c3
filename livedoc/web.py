"""Accessors for per-app objects that views need (the Redis client, the stream hub, the flags)."""
from __future__ import annotations

from flask import current_app
from redis import Redis

from livedoc import flags
from livedoc.hub import StreamHub


def redis_conn() -> Redis:
    """The app's Redis client (one pool per process)."""
    return current_app.extensions["livedoc.redis"]


def stream_hub() -> StreamHub:
    """This process's stream hub."""
    return current_app.extensions["livedoc.hub"]


def realtime_flags() -> flags.RealtimeFlags:
    """The real-time flags in force now (environment defaults plus the Redis override)."""
    return flags.current(redis_conn(), flags.RealtimeFlags.from_config(current_app.config))
