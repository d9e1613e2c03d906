"""The ``serve``, ``migrate`` and ``audit verify`` commands: configuration, logging, and the exit status."""

from __future__ import annotations

from collections.abc import Mapping

import trio
import trio_asyncio

from grantexd import lifecycle
from grantexd.config import Config, ConfigError, load_config
from grantexd.errors import DatabaseUnavailable, leaf_exceptions
from grantexd.logging import configure_logging, get_logger, log_fatal
from grantexd.services import audit
from grantexd.store.database import Database, PoolSettings
from grantexd.store.migrations import MigrationError, apply_migrations


def load_config_or_log(environ: Mapping[str, str] | None = None) -> Config | None:
    """Load the configuration; on failure write the one fatal line naming every bad variable."""
    try:
        return load_config(environ)
    except ConfigError as exc:
        log_fatal("config.invalid", errors=exc.problems, message=str(exc))
        return None


def command_pool_settings(config: Config, max_size: int) -> PoolSettings:
    """Return pool settings for a one-shot command: a few connections, none kept idle."""
    return PoolSettings(
        url=config.database_url.reveal(),
        min_size=0,
        max_size=max_size,
        connect_timeout_seconds=config.db_connect_timeout_seconds,
        command_timeout_seconds=config.db_command_timeout_seconds,
        idle_timeout_seconds=0,
    )


def serve(environ: Mapping[str, str] | None = None) -> int:
    """Run the daemon; return 0 after a clean shutdown, 1 when configuration or startup fails."""
    configure_logging("info")
    config = load_config_or_log(environ)
    if config is None:
        return 1
    configure_logging(config.log_level)
    try:
        trio.run(lifecycle.run, config)
    except Exception as exc:  # noqa: BLE001 - the last line before exit must say why
        errors = leaf_exceptions(exc)
        expected = [error for error in errors if isinstance(error, _STARTUP_ERRORS)]
        if expected:
            log_fatal("startup.failed", error="; ".join(str(error) for error in expected))
        else:
            log_fatal("process.crashed", error=repr(errors[0]), exc_info=errors[0])
        return 1
    return 0


_STARTUP_ERRORS = (lifecycle.StartupError, MigrationError, DatabaseUnavailable)


def migrate(environ: Mapping[str, str] | None = None) -> int:
    configure_logging("info")
    config = load_config_or_log(environ)
    if config is None:
        return 1

    async def apply() -> list[str]:
        async with trio_asyncio.open_loop():
            db = await Database.open(command_pool_settings(config, max_size=1))
            try:
                return await apply_migrations(db)
            finally:
                await db.close()

    try:
        applied = trio.run(apply)
    except Exception as exc:
        # trio_asyncio's loop nursery wraps the failure in exception groups.
        expected = (DatabaseUnavailable, MigrationError)
        failures = [error for error in leaf_exceptions(exc) if isinstance(error, expected)]
        if not failures:
            raise
        log_fatal("migrate.failed", error="; ".join(str(error) for error in failures))
        return 1
    get_logger().info("migrate.done", applied=applied)
    return 0


def verify_audit(developer_id: str | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Verify audit hash chains and log one line per chain.

    Checks one developer's chain, or every chain when ``developer_id`` is None. Returns 0 when
    every chain is intact, 1 when one is broken and 2 when the check could not run.
    """
    configure_logging("info")
    config = load_config_or_log(environ)
    if config is None:
        return 2

    async def verify() -> int:
        async with trio_asyncio.open_loop():
            db = await Database.open(command_pool_settings(config, max_size=1))
            try:
                if not await audit.audit_log_exists(db):
                    log_fatal(
                        "audit.verify.failed",
                        error="the audit_entries table does not exist; run grantexd migrate first",
                    )
                    return 2
                reports = await audit.verify_chains(db, developer_id)
                return 1 if any(report.first_break is not None for report in reports) else 0
            finally:
                await db.close()

    try:
        return trio.run(verify)
    except Exception as exc:  # noqa: BLE001 - exit 2, not Python's 1, which means "broken"
        errors = leaf_exceptions(exc)
        failures = [error for error in errors if isinstance(error, DatabaseUnavailable)]
        if failures:
            log_fatal("audit.verify.failed", error=str(failures[0]))
        else:
            log_fatal("audit.verify.crashed", error=repr(errors[0]), exc_info=errors[0])
        return 2
