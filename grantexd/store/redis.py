"""The Redis client: lazy connection, bounded calls, and backoff while Redis is away.

Redis holds only what may be lost (rate-limit windows, the revocation cache), so every call
here is best effort: it either completes within ``timeout_seconds`` or raises
``RedisUnavailable``, and callers decide whether to fail open. After a failure the client
waits before trying again (50 ms, doubling to at most 2 s), so an outage costs one fast
failure per request instead of one timeout per request.

``REDIS_URL`` selects one of three clients:

- ``redis://``, ``rediss://`` or ``unix://``: one server, through redis-py's ``from_url``.
- ``redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db]``
  with the optional query parameters ``sentinel_username`` and ``sentinel_password``: the
  master that the Sentinels name. Every new connection queries the Sentinels for the master's
  address, so after a failover the client reconnects to the new master by itself.
- ``redis+cluster://[[username]:password@]host[:port][,host[:port]...]``: a Redis Cluster,
  found through any of the listed nodes.

``grantexd.store.redis_url`` parses the last two forms and describes them in full.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
import trio
import trio_asyncio

from grantexd.logging import get_logger
from grantexd.store.redis_url import CLUSTER_SCHEME, SENTINEL_SCHEME, parse_cluster_url, parse_sentinel_url
from grantexd.tracing import span

log = get_logger()

T = TypeVar("T")

_BACKOFF_START_SECONDS = 0.05
_BACKOFF_MAX_SECONDS = 2.0
_HEALTH_CHECK_INTERVAL_SECONDS = 30

# RedisClusterException (no reachable node, a slot not covered) is not a RedisError.
_DRIVER_ERRORS = (OSError, redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused the connection, or is in its backoff period."""


def revoked_token_key(jti: str) -> str:
    return f"revoked:tok:{jti}"


def revoked_grant_key(grant_id: str) -> str:
    return f"revoked:grant:{grant_id}"


def rate_limit_key(scope: str, subject: str, window_index: int) -> str:
    """Key of one rate-limit window; ``scope`` names the limit (ip, developer, authorize, ...).

    The braces are a Redis Cluster hash tag: only ``scope:subject`` picks the slot, so the
    current and the previous window, which one script reads together, share a slot. A ``}``
    inside the subject ends the tag early but at the same place in both keys.
    """
    return f"ratelimit:{{{scope}:{subject}}}:{window_index}"


# A sliding-window counter in one round trip: the current fixed window's count plus the
# previous window's count weighted by how much of it still overlaps the sliding window.
# A request that would exceed the limit is rejected and not counted.
_SLIDING_WINDOW_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local elapsed_ms = tonumber(ARGV[3])
local used = math.floor(previous * (window_ms - elapsed_ms) / window_ms) + current
if used >= limit then
  return {0, used}
end
current = redis.call('INCR', KEYS[1])
if current == 1 then
  redis.call('PEXPIRE', KEYS[1], window_ms * 2)
end
return {1, used + 1}
"""


def _open_client(url: str, timeout_seconds: float) -> tuple[aioredis.Redis | RedisCluster, Sentinel | None]:
    """Build the client for ``url`` without connecting; return it and its Sentinel manager, if any."""
    timeouts: dict[str, Any] = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds}
    scheme = url.partition("://")[0]
    if scheme == SENTINEL_SCHEME:
        target = parse_sentinel_url(url)
        sentinel = Sentinel(
            list(target.sentinels),
            sentinel_kwargs={
                **timeouts,
                "username": target.sentinel_username,
                "password": target.sentinel_password,
            },
            **timeouts,
        )
        master = sentinel.master_for(
            target.service_name,
            db=target.db,
            username=target.username,
            password=target.password,
            health_check_interval=_HEALTH_CHECK_INTERVAL_SECONDS,
        )
        return master, sentinel
    if scheme == CLUSTER_SCHEME:
        # NOTE: while no node is reachable, redis-py also logs an error for each failed topology
        # refresh (about one a second with steady traffic in a local test), unlike the single warning
        # per outage that RedisStore logs.
        cluster = parse_cluster_url(url)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in cluster.nodes],
            username=cluster.username,
            password=cluster.password,
            health_check_interval=_HEALTH_CHECK_INTERVAL_SECONDS,
            **timeouts,
        )
        return client, None
    single = aioredis.Redis.from_url(url, health_check_interval=_HEALTH_CHECK_INTERVAL_SECONDS, **timeouts)
    return single, None


class RedisStore:
    def __init__(self, url: str, timeout_seconds: float) -> None:
        self._client, self._sentinel = _open_client(url, timeout_seconds)
        self._timeout_seconds = timeout_seconds
        self._retry_at = 0.0
        self._backoff_seconds = _BACKOFF_START_SECONDS
        self._available = True
        self._sliding_window = self._client.register_script(_SLIDING_WINDOW_SCRIPT)

    @property
    def available(self) -> bool:
        return self._available

    async def _call(self, operation: str, function: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        now = trio.current_time()
        if not probe and now < self._retry_at:
            raise RedisUnavailable("Redis is unavailable; waiting before the next attempt")
        try:
            with trio.fail_after(self._timeout_seconds), span("redis.command", **{"db.operation": operation}):
                result = await trio_asyncio.aio_as_trio(function)()
        except (trio.TooSlowError, *_DRIVER_ERRORS) as exc:
            self._record_failure(operation, exc)
            raise RedisUnavailable(f"Redis {operation} failed: {exc!r}") from exc
        if not self._available:
            log.info("redis.available")
        self._available = True
        self._backoff_seconds = _BACKOFF_START_SECONDS
        self._retry_at = 0.0
        return result

    def _record_failure(self, operation: str, exc: BaseException) -> None:
        if self._available:
            # One line per outage, not one per request.
            log.warning("redis.unavailable", operation=operation, error=repr(exc))
        self._available = False
        self._retry_at = trio.current_time() + self._backoff_seconds
        self._backoff_seconds = min(self._backoff_seconds * 2, _BACKOFF_MAX_SECONDS)

    async def ping(self) -> None:
        await self._call("PING", self._client.ping, probe=True)

    async def get(self, key: str) -> bytes | None:
        result = await self._call("GET", lambda: self._client.get(key))
        return result.encode() if isinstance(result, str) else result

    async def exists_any(self, *keys: str) -> bool:
        # RedisCluster (redis-py 8.2) sends one EXISTS per hash slot and sums the counts, so the
        # keys may live in different slots.
        count: int = await self._call("EXISTS", lambda: self._client.exists(*keys))
        return count > 0

    async def set_with_ttl(self, key: str, value: str, ttl_seconds: int) -> None:
        await self._call("SET", lambda: self._client.set(key, value, ex=max(1, ttl_seconds)))

    async def count_request(
        self, scope: str, subject: str, limit: int, window_ms: int, now_ms: int
    ) -> tuple[bool, int]:
        """Count one request against a sliding-window limit; return (allowed, requests used)."""
        window_index = now_ms // window_ms
        keys = [
            rate_limit_key(scope, subject, window_index),
            rate_limit_key(scope, subject, window_index - 1),
        ]
        arguments = [limit, window_ms, now_ms - window_index * window_ms]
        allowed, used = await self._call(
            "EVALSHA", lambda: self._sliding_window(keys=keys, args=arguments)
        )
        return bool(allowed), int(used)

    async def close(self) -> None:
        with trio.move_on_after(2) as scope:
            scope.shield = True
            # The Sentinel manager keeps its own connections to the Sentinels.
            closers = [self._client.aclose] if self._sentinel is None else [self._client.aclose, self._sentinel.aclose]
            for close_client in closers:
                try:
                    await trio_asyncio.aio_as_trio(close_client)()
                except _DRIVER_ERRORS as exc:
                    log.warning("redis.close.failed", error=repr(exc))
