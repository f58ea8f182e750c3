"""Redis clients for livedoc: one pool per process, handed to everything that needs Redis."""
from __future__ import annotations

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry


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


class ResilientRedis(Redis):
    """The RQ workers' client (`rq worker --connection-class`): it rides out a Redis restart.

    Without it the first refused connection mid-conversion ends the attempt, the failure cannot be
    recorded, and the worker process itself exits; retrying for about half a minute lets the
    conversion simply carry on once Redis is back.
    """

    @classmethod
    def from_url(cls, url: str, **kwargs) -> ResilientRedis:
        """Like Redis.from_url, with retries on connection errors (exponential backoff, ~30 s)."""
        kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20))
        kwargs.setdefault("retry_on_error", [ConnectionError, TimeoutError])
        return super().from_url(url, **kwargs)
