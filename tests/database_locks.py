"""Locks held from a separate PostgreSQL connection, to make the daemon wait for real."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from tests.support import query

# The key grantexd.store.migrations locks while it applies migrations.
MIGRATION_LOCK_KEY = 0x6772616E746578


class HeldTransaction:
    """A transaction on a separate connection that keeps the locks its statement took until released."""

    def __init__(self, url: str, statement: str) -> None:
        self.url = url
        self.statement = statement
        self.locked = threading.Event()
        self.released = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._hold()), daemon=True)

    async def _hold(self) -> None:
        connection = await asyncpg.connect(self.url, timeout=10)
        try:
            async with connection.transaction():
                await connection.execute(self.statement)
                self.locked.set()
                await asyncio.get_running_loop().run_in_executor(None, self.released.wait, 60)
        finally:
            await connection.close()

    def release(self) -> None:
        self.released.set()
        self.thread.join(10)


@contextmanager
def held_transaction(url: str, statement: str) -> Iterator[HeldTransaction]:
    held = HeldTransaction(url, statement)
    held.thread.start()
    assert held.locked.wait(10), f"could not run {statement!r}"
    try:
        yield held
    finally:
        held.release()


def lock_waiters(url: str) -> int:
    """Count the lock requests in the database of ``url`` that are waiting to be granted."""
    rows = query(
        url,
        "SELECT count(*) AS waiting FROM pg_locks JOIN pg_database ON pg_database.oid = pg_locks.database"
        " WHERE NOT pg_locks.granted AND pg_database.datname = current_database()",
    )
    return int(rows[0]["waiting"])
