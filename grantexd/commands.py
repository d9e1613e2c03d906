"""The ``serve`` and ``migrate`` commands: configuration, logging, and the exit status."""

from __future__ import annotations

from collections.abc import Mapping

import trio
import trio_asyncio

from grantexd import lifecycle
from grantexd.config import ConfigError, load_config
from grantexd.errors import DatabaseUnavailable
from grantexd.logging import configure_logging, get_logger, log_fatal
from grantexd.store.database import Database, PoolSettings
from grantexd.store.migrations import MigrationError, apply_migrations


def serve(environ: Mapping[str, str] | None = None) -> int:
    """Run the daemon; return 0 after a clean shutdown, 1 when configuration or startup fails."""
    configure_logging("info")
    try:
        config = load_config(environ)
    except ConfigError as exc:
        log_fatal("config.invalid", errors=exc.problems, message=str(exc))
        return 1
    configure_logging(config.log_level)
    try:
        trio.run(lifecycle.run, config)
    except Exception as exc:  # noqa: BLE001 - the last line before exit must say why
        errors = _leaf_exceptions(exc)
        expected = [error for error in errors if isinstance(error, _STARTUP_ERRORS)]
        if expected:
            log_fatal("startup.failed", error="; ".join(str(error) for error in expected))
        else:
            log_fatal("process.crashed", error=repr(errors[0]), exc_info=errors[0])
        return 1
    return 0


_STARTUP_ERRORS = (lifecycle.StartupError, MigrationError, DatabaseUnavailable)


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """Flatten the exception groups that Trio nurseries raise into their leaf exceptions."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in exc.exceptions:
            leaves.extend(_leaf_exceptions(inner))
        return leaves
    return [exc]


def migrate(environ: Mapping[str, str] | None = None) -> int:
    configure_logging("info")
    try:
        config = load_config(environ)
    except ConfigError as exc:
        log_fatal("config.invalid", errors=exc.problems, message=str(exc))
        return 1

    async def apply() -> list[str]:
        async with trio_asyncio.open_loop():
            db = await Database.open(
                PoolSettings(
                    url=config.database_url.reveal(),
                    min_size=0,
                    max_size=1,
                    connect_timeout_seconds=config.db_connect_timeout_seconds,
                    command_timeout_seconds=config.db_command_timeout_seconds,
                    idle_timeout_seconds=0,
                )
            )
            try:
                return await apply_migrations(db)
            finally:
                await db.close()

    try:
        applied = trio.run(apply)
    except (DatabaseUnavailable, MigrationError) as exc:
        log_fatal("migrate.failed", error=str(exc))
        return 1
    get_logger().info("migrate.done", applied=applied)
    return 0
