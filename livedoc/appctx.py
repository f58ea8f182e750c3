"""The app's per-process objects, as views reach them: the Redis client, the stream hub, the file
storage, and the real-time flags in force.

create_app() makes them and keeps them in ``app.extensions``; views and services reach them through
these accessors. Not in livedoc/extensions.py: that module holds the Flask extensions, which exist,
unbound, before any app does, and stays importable without the stream hub (gevent).
"""

from __future__ import annotations

from flask import current_app
from redis import Redis

from livedoc import flags
from livedoc.hub import StreamHub
from livedoc.storage import Storage


def redis_conn() -> Redis:
    """The app's Redis client (one pool per process)."""
    return current_app.extensions["livedoc.redis"]


def stream_hub() -> StreamHub:
    """This process's stream hub."""
    return current_app.extensions["livedoc.hub"]


def file_storage() -> Storage:
    """The app's storage of originals and page files (one per process)."""
    return current_app.extensions["livedoc.storage"]


def realtime_flags() -> flags.RealtimeFlags:
    """The real-time flags in force now (environment defaults plus the Redis override)."""
    return flags.current(redis_conn(), flags.RealtimeFlags.from_config(current_app.config))
