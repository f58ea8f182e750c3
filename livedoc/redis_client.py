"""Redis clients for livedoc: one pool per process, handed to everything that needs Redis."""
from __future__ import annotations

from redis import BlockingConnectionPool, Redis


def connect(url: str, max_connections: int = 50, timeout: float = 5.0) -> Redis:
    """A client on a blocking pool (RQ needs raw bytes, so decode_responses stays False).

    redis-py's default pool raises once its cap is reached; with hundreds of greenlets a blocking
    pool makes the extra ones wait `timeout` seconds for a free connection instead of failing.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        decode_responses=False,
    )
    return Redis(connection_pool=pool)
