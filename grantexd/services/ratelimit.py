"""Rate limits shared by every instance through Redis, failing open while Redis is away.

Three limits apply: per client IP on every route except health, metrics and the JWKS (some
routes have a stricter per-IP limit); per developer on every authenticated route; and a
stricter per-developer limit on ``POST /v1/authorize``. Each is a one-minute sliding window.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from grantexd.config import TrustProxy
from grantexd.crypto.hashing import fingerprint
from grantexd.errors import AuthorizeRateLimited, RateLimitExceeded
from grantexd.logging import get_logger
from grantexd.store.redis import RedisStore, RedisUnavailable

log = get_logger()

WINDOW_MS = 60_000

# Per-IP limits that replace the default on routes that create credentials or accounts.
ROUTE_IP_LIMITS = {
    ("POST", "/v1/signup"): 30,
    ("POST", "/v1/keys/rotate"): 5,
    ("POST", "/v1/token"): 20,
    ("POST", "/v1/token/refresh"): 20,
    ("POST", "/v1/audit/log"): 30,
    ("POST", "/v1/principal-sessions"): 10,
}

EXEMPT_PATHS = ("/health", "/health/live", "/health/ready", "/metrics", "/.well-known/jwks.json")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int


class RateLimiter:
    def __init__(self, redis: RedisStore, clock_ms: Callable[[], int] | None = None) -> None:
        self._redis = redis
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    async def check(self, scope: str, subject: str, limit: int) -> Decision | None:
        """Count a request; return None when the limit is off (0) or Redis is unavailable."""
        if limit <= 0:
            return None
        now_ms = self._clock_ms()
        try:
            allowed, used = await self._redis.count_request(scope, subject, limit, WINDOW_MS, now_ms)
        except RedisUnavailable:
            # Fail open: RedisStore logs one warning per outage, not one per request.
            return None
        reset_seconds = max(1, -(-(WINDOW_MS - now_ms % WINDOW_MS) // 1000))
        remaining = max(0, limit - used)
        if allowed and remaining == max(1, limit // 10):
            log.warning(
                "ratelimit.approaching", scope=scope, subject=fingerprint(subject), limit=limit, remaining=remaining
            )
        return Decision(allowed=allowed, limit=limit, remaining=remaining, reset_seconds=reset_seconds)


def raise_if_exceeded(decision: Decision | None, scope: str) -> None:
    if decision is None or decision.allowed:
        return
    if scope == "authorize":
        raise AuthorizeRateLimited(f"Rate limit exceeded, retry in {decision.reset_seconds} seconds")
    if scope == "developer":
        raise RateLimitExceeded(f"Plan rate limit exceeded, retry in {decision.reset_seconds} seconds")
    raise RateLimitExceeded(f"Rate limit exceeded, retry in {decision.reset_seconds} seconds")


def client_ip(peer: str | None, forwarded_for: str | None, trust: TrustProxy) -> str:
    """Return the client address, believing X-Forwarded-For only as far as TRUST_PROXY allows."""
    peer_address = peer or "unknown"
    if not trust.enabled or not forwarded_for:
        return peer_address
    chain = [item.strip() for item in forwarded_for.split(",") if item.strip()]
    if trust.hops > 0:
        # Each trusted proxy appended the address it received from; the client is the entry
        # added by the outermost trusted proxy.
        if len(chain) >= trust.hops:
            return chain[-trust.hops]
        # Fewer entries than trusted proxies: the first entry is the farthest address known.
        return chain[0] if chain else peer_address
    hops = [peer_address, *reversed(chain)]
    for index, address in enumerate(hops):
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return address
        if not any(parsed in network for network in trust.networks):
            return address
        if index == len(hops) - 1:
            return address
    return peer_address
