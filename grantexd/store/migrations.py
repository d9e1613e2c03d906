"""Apply the numbered ``*.sql`` files in name order, once each, under an advisory lock.

Instances that start together on an empty database take turns on a session-level advisory
lock, so exactly one applies each file. Each applied file is recorded with its SHA-256; a file
that was edited after it was applied is reported instead of being run again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg
import trio

from grantexd.errors import DatabaseUnavailable, UniqueViolation
from grantexd.logging import get_logger
from grantexd.store.database import Database, Transaction

log = get_logger()

# An arbitrary constant that names "grantexd migrations" among advisory locks.
_MIGRATION_LOCK_KEY = 0x6772616E746578
_LOCK_POLL_SECONDS = 0.2


class MigrationError(Exception):
    """A migration failed, or an applied migration file was changed afterwards."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    directory = resources.files("grantexd.sql")
    files = sorted(
        (entry for entry in directory.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [Migration(name=entry.name, sql=entry.read_text(encoding="utf-8")) for entry in files]


async def apply_migrations(database: Database, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
    pending_migrations = bundled_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    async with database.connection() as connection:
        await _wait_for_migration_lock(connection)
        try:
            await connection.execute(
                """
                CREATE TABLE IF NOT EXISTS grantexd_migrations (
                    name       TEXT PRIMARY KEY,
                    checksum   TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """
            )
            rows = await connection.fetch("SELECT name, checksum FROM grantexd_migrations")
            recorded = {row["name"]: row["checksum"] for row in rows}
            for migration in pending_migrations:
                checksum = recorded.get(migration.name)
                if checksum is not None:
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.name} was changed after it was applied "
                            f"(recorded sha256 {checksum[:12]}, file {migration.checksum[:12]}); "
                            "restore the original file and add a new migration instead"
                        )
                    continue
                try:
                    await _apply_one(connection, migration)
                except (asyncpg.PostgresError, UniqueViolation, DatabaseUnavailable) as exc:
                    raise MigrationError(
                        f"migration {migration.name} failed and was rolled back: {exc}"
                    ) from exc
                applied_now.append(migration.name)
                log.info("migration.applied", migration=migration.name)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied_now


async def _wait_for_migration_lock(connection: Transaction) -> None:
    """Take the migration lock, polling while another instance holds it.

    A blocking ``pg_advisory_lock`` would be one query open for as long as the other instance
    migrates, so the command timeout would end the wait and fail startup.
    """
    waiting_logged = False
    while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK_KEY):
        if not waiting_logged:
            log.info("migration.lock.waiting", note="another instance is applying migrations")
            waiting_logged = True
        await trio.sleep(_LOCK_POLL_SECONDS)


async def _apply_one(connection: Transaction, migration: Migration) -> None:
    # NOTE: the file runs as one statement under DB_COMMAND_TIMEOUT (30 s by default), so a
    # migration that takes longer, such as an index build on a large table, fails startup.
    await connection.execute("BEGIN")
    try:
        await connection.execute(migration.sql)
        await connection.execute(
            "INSERT INTO grantexd_migrations (name, checksum) VALUES ($1, $2)",
            migration.name,
            migration.checksum,
        )
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")
