"""What every service function needs: configuration, stores, keys and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from grantexd.config import Config
from grantexd.crypto.keys import KeySet
from grantexd.store.database import Database
from grantexd.store.redis import RedisStore


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Services:
    config: Config
    db: Database
    redis: RedisStore
    keys: KeySet
    clock: Callable[[], datetime] = field(default=utc_now)

    def now(self) -> datetime:
        return self.clock()
