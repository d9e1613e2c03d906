"""The context every service function takes: configuration, stores, keys and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from grantexd.config import Config
from grantexd.crypto.keys import KeyRing, KeySet
from grantexd.metrics import Metrics
from grantexd.services.ratelimit import RateLimiter
from grantexd.store.database import Database
from grantexd.store.redis import RedisStore


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Services:
    config: Config
    db: Database
    redis: RedisStore
    key_ring: KeyRing
    clock: Callable[[], datetime] = field(default=utc_now)
    metrics: Metrics = field(default_factory=Metrics)
    rate_limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.rate_limiter = RateLimiter(self.redis)

    @property
    def keys(self) -> KeySet:
        """The key set in force now; read it once per token so signing and recording agree."""
        return self.key_ring.current

    def now(self) -> datetime:
        return self.clock()
