"""Which browser origins may talk to livedoc: its own (as the request reaches it, after ProxyFix)
and those listed in ALLOWED_ORIGINS. A request without Origin is not a cross-site browser request
(browsers always send it on WebSocket handshakes and cross-origin writes), so it is let through.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from flask import Request

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case with the default port dropped; None if not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def allowed_origins(config: Mapping) -> set[str]:
    """The origins ALLOWED_ORIGINS lists, normalized."""
    listed = (normalize(x) for x in str(config.get("ALLOWED_ORIGINS") or "").split(",") if x.strip())
    return {x for x in listed if x}


def own_origin(request: Request) -> str | None:
    """The origin this request was addressed to."""
    scheme = "https" if request.is_secure else "http"
    return normalize(f"{scheme}://{request.host}")


def origin_ok(request: Request, config: Mapping) -> bool:
    """True when the request has no Origin, or its Origin is the app's own or an allowed one."""
    sent = request.headers.get("Origin")
    if sent is None:
        return True
    origin = normalize(sent)
    return origin is not None and (origin == own_origin(request) or origin in allowed_origins(config))
