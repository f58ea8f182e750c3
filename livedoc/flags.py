"""Real-time feature flags: defaults from the environment, a runtime override in Redis.

The override is one Redis hash, so a rollback ("realtime off") needs no restart and reaches every
web host: page loads read it, and every stream hub re-reads it on each poll tick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from redis import Redis
from redis.exceptions import RedisError

from config import REALTIME_MODES
from livedoc import keys

OFF = "off"
CHOICES = (*REALTIME_MODES, OFF)


class Transport(StrEnum):
    """The ways progress reaches a client, best first: the order clients step down on failure."""

    WS = "ws"
    SSE = "sse"
    LONGPOLL = "longpoll"
    POLL = "poll"


CHAIN = tuple(Transport)


def client_settings(flags: RealtimeFlags, config: Mapping) -> dict:
    """What a page's script needs to follow the server: its mode, the chain and the limits."""
    return {
        "mode": flags.transport,
        "transports": [t.value for t in CHAIN],
        "maxDocs": config["MAX_DOCS_PER_STREAM"],
        "longpollWait": config["LONGPOLL_MAX_WAIT"],
        "pollInterval": config["SSE_POLL_INTERVAL"],
        "pingInterval": config["SSE_PING_INTERVAL"],
        "connectTimeout": config["CONNECT_TIMEOUT_MS"],
    }


@dataclass(frozen=True)
class RealtimeFlags:
    """The real-time switches in force."""

    enabled: bool
    mode: str
    push: bool
    websocket: bool
    source: str = "env"

    @property
    def transport(self) -> str:
        """The best transport clients should use: ws when offered, else the mode; poll when off."""
        if not self.enabled:
            return Transport.POLL.value
        return Transport.WS.value if self.websocket and self.mode == Transport.SSE else self.mode

    def allows(self, transport: Transport) -> bool:
        """Whether connections of this transport may open (and stay open) under these flags.

        The chain is ws → sse → longpoll → poll. The mode caps it (a "poll" rollback stops
        WebSockets too); below the cap every fallback stays allowed, so a client whose WebSocket is
        blocked by a proxy can still stream. WebSockets sit on top only when the flag offers them.
        """
        return CHAIN.index(Transport(transport)) >= CHAIN.index(Transport(self.transport))

    @classmethod
    def from_config(cls, config: Mapping) -> RealtimeFlags:
        """The defaults the environment sets."""
        return cls(
            enabled=config["REALTIME_ENABLED"],
            mode=config["REALTIME_MODE"],
            push=config["REALTIME_PUSH"],
            websocket=config["WEBSOCKET_ENABLED"],
        )

    def as_dict(self) -> dict:
        """JSON-ready form for the admin page and the CLI."""
        return {
            "enabled": self.enabled,
            "mode": self.mode,
            "transport": self.transport,
            "push": self.push,
            "websocket": self.websocket,
            "source": self.source,
        }


def _apply(defaults: RealtimeFlags, raw: Mapping[bytes, bytes]) -> RealtimeFlags:
    if not raw:
        return defaults
    flags = replace(defaults, source="redis")
    mode = raw.get(b"mode", b"").decode()
    if mode == OFF:
        flags = replace(flags, enabled=False)
    elif mode in REALTIME_MODES:
        flags = replace(flags, enabled=True, mode=mode)
    for name in ("push", "websocket"):
        value = raw.get(name.encode())
        if value in (b"0", b"1"):
            flags = replace(flags, **{name: value == b"1"})
    return flags


def current(connection: Redis, defaults: RealtimeFlags) -> RealtimeFlags:
    """The flags in force now; the environment's defaults when Redis cannot be read."""
    try:
        raw = connection.hgetall(keys.FLAGS)
    except RedisError:
        return defaults
    return _apply(defaults, raw)


def from_raw(defaults: RealtimeFlags, raw: Mapping[bytes, bytes]) -> RealtimeFlags:
    """The flags in force given the override hash already read (the hub reads it in a pipeline)."""
    return _apply(defaults, raw)


def set_override(
    connection: Redis, mode: str | None = None, push: bool | None = None, websocket: bool | None = None
) -> None:
    """Override the environment on every host: mode is sse, longpoll, poll or off."""
    if mode is not None and mode not in CHOICES:
        raise ValueError(f"mode must be one of {', '.join(CHOICES)}")
    values = {}
    if mode is not None:
        values["mode"] = mode
    if push is not None:
        values["push"] = "1" if push else "0"
    if websocket is not None:
        values["websocket"] = "1" if websocket else "0"
    if values:
        connection.hset(keys.FLAGS, mapping=values)


def clear_override(connection: Redis) -> None:
    """Drop the override so the environment's defaults apply again."""
    connection.delete(keys.FLAGS)
