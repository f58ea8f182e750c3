"""Redis clients for livedoc: one pool per process, handed to everything that needs Redis.

REDIS_URL is a plain `redis://` URL, or `redis+sentinel://[:password@]host:port[,host:port]/master/db`
for Redis Sentinel: clients then ask the sentinels where the master is, and ask again after a
failover (a connection to a demoted master fails with a ConnectionError and is replaced).
"""

from __future__ import annotations

from redis import BlockingConnectionPool, Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

# The grammar of REDIS_URL is a setting's: config.py validates it without importing livedoc.
from config import SENTINEL_SCHEME, SentinelURL, is_sentinel, sentinel_url

__all__ = ["SENTINEL_SCHEME", "SentinelURL", "is_sentinel", "sentinel_url"]


class SentinelBlockingConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A pool of connections to the master the sentinels name that, like BlockingConnectionPool,
    makes callers past the cap wait for a free connection instead of failing."""


def _sentinel_pool(url: str, pool_class: type, **kwargs) -> SentinelConnectionPool:
    spec = SentinelURL.parse(url)
    # Sentinels answer fast or not at all: a dead one must not stall a lookup for long.
    sentinel = Sentinel(spec.sentinels, sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 2})
    return pool_class(
        spec.master, sentinel, db=spec.db, username=spec.username, password=spec.password, **kwargs
    )


def connect(url: str, max_connections: int = 50, timeout: float = 5.0) -> Redis:
    """A client on a blocking pool (RQ needs raw bytes, so decode_responses stays False).

    redis-py's default pool raises once its cap is reached; with hundreds of greenlets a blocking
    pool makes the extra ones wait `timeout` seconds for a free connection instead of failing.
    """
    options = {
        "max_connections": max_connections,
        "timeout": timeout,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "decode_responses": False,
    }
    if is_sentinel(url):
        pool = _sentinel_pool(url, SentinelBlockingConnectionPool, **options)
    else:
        pool = BlockingConnectionPool.from_url(url, **options)
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
        if is_sentinel(url):
            # `rq worker -u redis+sentinel://...` reaches here through --connection-class.
            retry = kwargs.pop("retry")
            retry_on_error = kwargs.pop("retry_on_error")
            pool = _sentinel_pool(
                url, SentinelConnectionPool, retry=retry, retry_on_error=retry_on_error, **kwargs
            )
            return cls(connection_pool=pool, retry=retry, retry_on_error=retry_on_error)
        return super().from_url(url, **kwargs)
