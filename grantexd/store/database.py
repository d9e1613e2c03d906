"""The PostgreSQL pool, reached from Trio through the trio-asyncio bridge.

asyncpg runs only on asyncio, so every call into it goes through ``trio_asyncio.aio_as_trio``
here and nowhere else. Services see Trio-native methods (``fetch``, ``fetchrow``, ``execute``)
on a ``Database`` or on the ``Transaction`` that ``Database.transaction()`` yields.

Driver errors are translated once, here: a lost or refused connection becomes
``DatabaseUnavailable`` (503, retryable), a unique violation becomes ``UniqueViolation``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import trio
import trio_asyncio

from grantexd.errors import (
    BadRequest,
    ConcurrentUpdate,
    DatabaseUnavailable,
    ForeignKeyViolation,
    UniqueViolation,
)
from grantexd.logging import get_logger
from grantexd.tracing import span

log = get_logger()

T = TypeVar("T")

# Errors that mean "the server is not reachable or the connection broke", not "the query
# was wrong": these become a retryable 503.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)


def _operation_of(query: str) -> str:
    """Return the statement's first keyword (SELECT, INSERT, ...) for span names, never its values."""
    words = query.split(None, 1)
    return words[0].upper() if words else ""


class ConnectionRejected(ConnectionError):
    """PostgreSQL refused a new connection because of the login, the database name or the server state."""


async def _connect_translating_rejections(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """Open a pool connection, turning a server-side refusal into ``ConnectionRejected``.

    asyncpg raises the same error classes for a refused login as for a failed query, so
    without this a revoked role or a database that stopped accepting connections would be a
    500 instead of a retryable 503.
    """
    try:
        return await asyncpg.connect(*args, **kwargs)
    except asyncpg.PostgresError as exc:
        raise ConnectionRejected(str(exc)) from exc


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return UniqueViolation(getattr(exc, "constraint_name", None))
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return ForeignKeyViolation(getattr(exc, "constraint_name", None))
    if isinstance(exc, (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)):
        # Another transaction won. The SDKs retry a 503, and the retry reads the new state.
        return ConcurrentUpdate()
    if isinstance(exc, asyncpg.DataError):
        # A value that PostgreSQL cannot store (a NUL character, an out-of-range number) got
        # past the request checks. It came from the client, so it is a 400, not a 500.
        log.warning("database.data_error", error=str(exc))
        return BadRequest("A request value cannot be stored: it contains an invalid character or number")
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return DatabaseUnavailable()
    return exc


def split_ssl_mode(url: str) -> tuple[str, ssl.SSLContext | str | None]:
    """Take ``sslmode`` out of the URL and return the matching asyncpg ``ssl`` argument.

    ``require`` encrypts without checking the certificate, as libpq does; ``verify-ca`` and
    ``verify-full`` check it against the system trust store (and the host name for verify-full).
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    modes = query.pop("sslmode", None)
    rest = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    if not modes:
        return rest, None
    mode = modes[-1]
    if mode in ("disable", "allow", "prefer", "require"):
        return rest, mode
    context = ssl.create_default_context()
    if mode == "verify-ca":
        context.check_hostname = False
    return rest, context


@dataclass(frozen=True)
class PoolSettings:
    url: str
    min_size: int
    max_size: int
    connect_timeout_seconds: float
    command_timeout_seconds: float
    idle_timeout_seconds: float


class _Queries:
    """Trio-facing query methods over an asyncpg connection or pool."""

    _target: Any

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        function = getattr(self._target, method)
        try:
            with span("db.query", **{"db.system": "postgresql", "db.operation": _operation_of(query)}):
                return await trio_asyncio.aio_as_trio(function)(query, *args)
        except Exception as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        result: list[asyncpg.Record] = await self._call("fetch", query, *args)
        return result

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        result: asyncpg.Record | None = await self._call("fetchrow", query, *args)
        return result

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call("fetchval", query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await self._call("execute", query, *args)
        return result


class Transaction(_Queries):
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._target = connection

    async def advisory_lock(self, developer_id: str, purpose: int) -> None:
        """Serialize work per developer until this transaction ends.

        ``purpose`` keeps independent kinds of work apart: 0 audit chain, 2 agent quota,
        3 grant quota, 4 revocation versus delegation.
        """
        await self.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", developer_id, purpose)


class Database(_Queries):
    def __init__(self, pool: asyncpg.Pool, settings: PoolSettings) -> None:
        self._target = pool
        self._pool = pool
        self.settings = settings

    @classmethod
    async def open(cls, settings: PoolSettings) -> Database:
        """Create the pool and prove one connection works; raise DatabaseUnavailable if not."""
        url, ssl_argument = split_ssl_mode(settings.url)

        async def create() -> asyncpg.Pool:
            return await asyncpg.create_pool(
                url,
                ssl=ssl_argument,
                min_size=settings.min_size,
                max_size=settings.max_size,
                timeout=settings.connect_timeout_seconds,
                # NOTE: each query arms an asyncio timer for this timeout, and trio-asyncio 0.16
                # keeps cancelled timers in its heap until they fall due. Under load the heap
                # therefore keeps about (queries per second x timeout) timers and their contexts.
                # bench/RESULTS.rst measured RSS growing from 83 to 236 MiB, with longer GC
                # pauses; a lower DB_COMMAND_TIMEOUT shrinks the heap.
                command_timeout=settings.command_timeout_seconds,
                max_inactive_connection_lifetime=settings.idle_timeout_seconds,
                connect=_connect_translating_rejections,
            )

        try:
            with trio.fail_after(settings.connect_timeout_seconds + 1):
                pool = await trio_asyncio.aio_as_trio(create)()
        except trio.TooSlowError:
            raise DatabaseUnavailable("timed out connecting to PostgreSQL") from None
        except Exception as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        database = cls(pool, settings)
        try:
            await database.fetchval("SELECT 1")
        except (asyncpg.PostgresError, DatabaseUnavailable) as exc:
            # The first connection failed. Report the driver's reason (refused, timed out, or a
            # wrong database name, user or password), not the generic retry message for clients.
            await database.close()
            reason = exc.__cause__ if isinstance(exc, DatabaseUnavailable) and exc.__cause__ else exc
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL: {str(reason) or type(reason).__name__}"
            ) from exc
        except BaseException:
            await database.close()
            raise
        return database

    async def close(self) -> None:
        """Close the pool, waiting at most 5 s for connections in use before terminating them."""
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                await trio_asyncio.aio_as_trio(self._pool.close)()
            except Exception as exc:
                log.warning("database.close.failed", error=str(exc))
        if scope.cancelled_caught:
            self._pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Transaction]:
        """Yield one pooled connection outside any transaction (for session-level locks)."""
        connection = await _run_translated(self._pool.acquire)
        try:
            yield Transaction(connection)
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await trio_asyncio.aio_as_trio(self._pool.release)(connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Yield a Transaction that commits on normal exit and rolls back on any exception."""
        async with self.connection() as connection:
            asyncpg_transaction = connection._target.transaction()
            await _run_translated(asyncpg_transaction.start)
            try:
                yield connection
            except BaseException:
                # Roll back even when cancelled; the shield has its own deadline so a dead
                # server cannot hold shutdown.
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    try:
                        await trio_asyncio.aio_as_trio(asyncpg_transaction.rollback)()
                    except Exception as exc:
                        log.warning("database.rollback.failed", error=str(exc))
                raise
            else:
                await _run_translated(asyncpg_transaction.commit)

    async def probe(self) -> None:
        """Run ``SELECT 1`` for the health check, raising DatabaseUnavailable if it fails.

        Unlike the other queries, this returns as soon as the caller is cancelled. When the
        server hangs, asyncpg's cleanup of a cancelled query (a CancelRequest, then releasing the
        connection) can take up to the command timeout, so it finishes in the background instead
        of holding the health check past its own timeout.
        """

        async def select_one() -> Any:
            query = asyncio.ensure_future(self._pool.fetchval("SELECT 1"))
            query.add_done_callback(_discard_outcome)
            try:
                return await asyncio.shield(query)
            except asyncio.CancelledError:
                query.cancel()
                raise

        try:
            await _run_translated(select_one)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            # Any other driver error still means the database cannot serve requests, and the
            # health check must report that instead of failing with a 500.
            log.warning("database.probe.failed", error=repr(exc))
            raise DatabaseUnavailable(f"the health query failed: {exc!r}") from exc

    def pool_usage(self) -> tuple[int, int]:
        """Return (open connections, connections in use)."""
        size = self._pool.get_size()
        return size, size - self._pool.get_idle_size()


def _discard_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve a background query's outcome so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def _run_translated(function: Callable[[], Any]) -> Any:
    try:
        return await trio_asyncio.aio_as_trio(function)()
    except Exception as exc:
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc
