"""PostgreSQL LISTEN on a dedicated connection, waking a Trio task on each notification.

The connection is opened beside the pool, not taken from it, because it stays open for the
life of the worker. asyncpg calls its listeners on the asyncio loop that trio-asyncio runs in
the Trio thread; they hand the wake-up to Trio through the Trio token. A lost connection also
wakes the task, which then finds ``is_connected`` false and opens a new listener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import trio
import trio_asyncio

from grantexd.errors import DatabaseUnavailable
from grantexd.logging import get_logger
from grantexd.store.database import PoolSettings, split_ssl_mode

log = get_logger()


class NotificationListener:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, settings: PoolSettings, channel: str, on_wake: Callable[[], None]) -> NotificationListener:
        """Connect and LISTEN on ``channel``; raise DatabaseUnavailable if that fails.

        ``on_wake`` runs in the Trio thread after each notification and after the connection is lost.
        """
        token = trio.lowlevel.current_trio_token()
        url, ssl_argument = split_ssl_mode(settings.url)

        def wake(*_arguments: Any) -> None:
            token.run_sync_soon(on_wake)

        async def connect() -> asyncpg.Connection:
            connection = await asyncpg.connect(url, ssl=ssl_argument, timeout=settings.connect_timeout_seconds)
            try:
                await connection.add_listener(channel, wake)
                connection.add_termination_listener(wake)
            except BaseException:
                connection.terminate()
                raise
            return connection

        try:
            with trio.fail_after(settings.connect_timeout_seconds + 1):
                connection = await trio_asyncio.aio_as_trio(connect)()
        except trio.TooSlowError:
            raise DatabaseUnavailable("timed out connecting to PostgreSQL to listen for notifications") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"cannot listen for PostgreSQL notifications: {exc}") from exc
        return cls(connection)

    @property
    def is_connected(self) -> bool:
        return not self._connection.is_closed()

    async def close(self) -> None:
        """Close the connection, waiting at most 5 s, then drop it; safe to call when already closed."""
        if self._connection.is_closed():
            return
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                await trio_asyncio.aio_as_trio(self._connection.close)()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("database.listener.close_failed", error=str(exc))
        if scope.cancelled_caught:
            self._connection.terminate()
