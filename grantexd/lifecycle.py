"""The process tree: startup in a fixed order, serving, and shutdown in the reverse order.

``run`` reads top to bottom as the startup sequence. Each step is logged when it completes; a
failure logs ``startup.failed`` at fatal and the process exits with status 1.

Shutdown starts on the first SIGTERM or SIGINT: readiness turns to draining, systemd hears
STOPPING=1, Hypercorn stops accepting and lets in-flight requests finish within the grace
period, workers are cancelled, then Redis and PostgreSQL are closed. A second signal cancels
the draining and skips straight to closing the clients. A signal during startup stops
startup at the step it is in.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import hypercorn.config
import hypercorn.trio
import trio
import trio_asyncio

from grantexd import __version__, sdnotify
from grantexd.config import Config
from grantexd.crypto.keys import (
    KeyRing,
    KeySet,
    SigningKey,
    generate_signing_key,
    load_signing_key,
    parse_key_encryption_key,
    single_key_set,
)
from grantexd.errors import DatabaseUnavailable, leaf_exceptions
from grantexd.http.app import create_app
from grantexd.http.asgi import ShieldFinalSend
from grantexd.http.state import RuntimeState
from grantexd.logging import get_logger
from grantexd.services.accounts import seed_developers
from grantexd.services.context import Services, utc_now
from grantexd.services.keys import KeyStoreError, ensure_key_set, load_key_set
from grantexd.store.database import Database, PoolSettings
from grantexd.store.migrations import apply_migrations
from grantexd.store.redis import RedisStore
from grantexd.tracing import setup_tracing, shutdown_tracing
from grantexd.workers.anomaly_detection import run_anomaly_detection
from grantexd.workers.webhook_delivery import run_webhook_delivery

log = get_logger()


class StartupError(Exception):
    """A startup step failed; the message names the step and the cause."""


@dataclass
class ShutdownControl:
    """Turns signals into the shutdown sequence."""

    state: RuntimeState
    startup_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    serving_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    requested: trio.Event = field(default_factory=trio.Event)
    started: bool = False
    signals_received: int = 0

    def request(self, reason: str) -> None:
        self.signals_received += 1
        if self.signals_received == 1:
            log.info("shutdown.requested", reason=reason)
            self.state.draining = True
            sdnotify.notify("STOPPING=1")
            self.requested.set()
            if not self.started:
                self.startup_scope.cancel()
        else:
            log.warning("shutdown.forced", reason=reason)
            self.serving_scope.cancel()

    async def watch_signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as receiver:
            task_status.started()
            async for signal_number in receiver:
                self.request(signal.Signals(signal_number).name)


def load_configured_key(config: Config) -> SigningKey | None:
    """Load RSA_PRIVATE_KEY, or generate a key when AUTO_GENERATE_KEYS is on.

    Returns None when neither is set, because the key set then lives in PostgreSQL.
    """
    if config.rsa_private_key_pem is not None:
        key = load_signing_key(config.rsa_private_key_pem.reveal())
        log.info("startup.signing_key.loaded", kid=key.kid)
        return key
    if config.auto_generate_keys and config.key_encryption_key is None:
        key = generate_signing_key()
        log.warning("startup.signing_key.generated", kid=key.kid, note="ephemeral key, development only")
        return key
    return None


async def open_key_set(config: Config, db: Database, configured_key: SigningKey | None) -> KeySet:
    if config.key_encryption_key is None:
        assert configured_key is not None
        return single_key_set(configured_key)
    kek = parse_key_encryption_key(config.key_encryption_key.reveal())
    try:
        key_set = await ensure_key_set(db, kek, configured_key, utc_now())
    except KeyStoreError as exc:
        raise StartupError(str(exc)) from exc
    log.info("startup.signing_keys.loaded", activeKid=key_set.active.kid, published=len(key_set.verifying))
    return key_set


async def run_key_refresh(config: Config, db: Database, ring: KeyRing, stop: trio.Event) -> None:
    """Reload the stored key set periodically, so rotations by other instances take effect here."""
    assert config.key_encryption_key is not None
    kek = parse_key_encryption_key(config.key_encryption_key.reveal())
    while not stop.is_set():
        with trio.move_on_after(config.keys_refresh_interval_seconds):
            await stop.wait()
        if stop.is_set():
            return
        try:
            try:
                key_set = await load_key_set(db, kek, utc_now())
            except KeyStoreError:
                # The active key was retired with --force: generate a replacement.
                key_set = await ensure_key_set(db, kek, None, utc_now())
        except (DatabaseUnavailable, KeyStoreError) as exc:
            log.error("keys.refresh.failed", error=str(exc))
            continue
        if key_set.active.kid != ring.current.active.kid:
            log.info("keys.active.changed", activeKid=key_set.active.kid)
        ring.replace(key_set)


def hypercorn_config(config: Config) -> hypercorn.config.Config:
    settings = hypercorn.config.Config()
    host = f"[{config.host}]" if ":" in config.host else config.host
    settings.bind = [f"{host}:{config.port}"]
    settings.graceful_timeout = config.shutdown_grace_seconds
    settings.accesslog = None
    # A Logger, not a name: Hypercorn treats a string as a file path to write to.
    settings.errorlog = logging.getLogger("hypercorn.error")
    settings.loglevel = "WARNING"
    settings.include_server_header = False
    return settings


async def run_watchdog(interval_seconds: float, stop: trio.Event) -> None:
    """Ping systemd's watchdog while the event loop runs, until shutdown is requested."""
    while not stop.is_set():
        sdnotify.notify("WATCHDOG=1")
        with trio.move_on_after(interval_seconds):
            await stop.wait()


async def run(config: Config, on_ready: Callable[[], None] | None = None) -> None:
    """Run the daemon until a signal stops it; raise StartupError if startup fails.

    ``on_ready`` is called once the HTTP server listens, just after READY=1.
    """
    state = RuntimeState()
    control = ShutdownControl(state=state)
    async with trio_asyncio.open_loop():
        async with trio.open_nursery() as root:
            await root.start(control.watch_signals)
            try:
                await _run_services(config, control, on_ready)
            finally:
                root.cancel_scope.cancel()


async def _run_services(config: Config, control: ShutdownControl, on_ready: Callable[[], None] | None) -> None:
    log.info("startup.begin", version=__version__, environment=config.environment)
    async with AsyncExitStack() as resources:
        with control.startup_scope:
            # 1. Tracing first, so every later step can be traced.
            if config.otel_exporter_otlp_endpoint is not None:
                setup_tracing(config.otel_exporter_otlp_endpoint)
                resources.callback(shutdown_tracing)

            # 2 and 3. Signing key. (An Ed25519 key, when configured, is validated only.) A key
            # set kept in PostgreSQL is opened after the migrations below.
            try:
                configured_key = load_configured_key(config)
            except ValueError as exc:
                raise StartupError(f"RSA_PRIVATE_KEY is not usable: {exc}") from exc

            # 4. PostgreSQL pool.
            try:
                db = await Database.open(
                    PoolSettings(
                        url=config.database_url.reveal(),
                        min_size=config.db_pool_min,
                        max_size=config.db_pool_max,
                        connect_timeout_seconds=config.db_connect_timeout_seconds,
                        command_timeout_seconds=config.db_command_timeout_seconds,
                        idle_timeout_seconds=config.db_pool_idle_timeout_seconds,
                    )
                )
            except DatabaseUnavailable as exc:
                raise StartupError(f"PostgreSQL is unreachable: {exc.message}") from exc
            resources.push_async_callback(_close_database, db)
            log.info("startup.database.connected", poolMax=config.db_pool_max)

            # 5. Migrations, under an advisory lock so that instances starting together take turns.
            applied = await apply_migrations(db)
            log.info("startup.migrations.done", applied=applied)
            key_ring = KeyRing(await open_key_set(config, db, configured_key))

            # 6. Redis connects lazily: an unreachable Redis shows in /health, not here.
            redis = RedisStore(config.redis_url.reveal(), config.redis_timeout_seconds)
            resources.push_async_callback(_close_redis, redis)
            log.info("startup.redis.configured")

            services = Services(config=config, db=db, redis=redis, key_ring=key_ring)

            # 7. Seed developers for development keys.
            if config.seed_api_key is not None or config.seed_sandbox_key is not None:
                await seed_developers(services)
                log.info("startup.seed.done")

            app = create_app(services, control.state)
        if control.startup_scope.cancelled_caught:
            log.info("startup.interrupted")
            return

        with control.serving_scope:
            async with trio.open_nursery() as serving:
                # 8. HTTP server; it returns once draining has finished. The listener closes
                # SHUTDOWN_DRAIN_DELAY after shutdown begins; until then /health/ready answers
                # 503 draining, so a load balancer can take this instance out first.
                listener_stop = trio.Event()
                try:
                    binds = await serving.start(
                        lambda task_status: hypercorn.trio.serve(
                            ShieldFinalSend(app),  # type: ignore[arg-type]
                            hypercorn_config(config),
                            shutdown_trigger=listener_stop.wait,
                            task_status=task_status,
                        )
                    )
                except Exception as exc:
                    socket_errors = [error for error in leaf_exceptions(exc) if isinstance(error, OSError)]
                    if not socket_errors:
                        raise
                    reason = socket_errors[0].strerror or str(socket_errors[0])
                    raise StartupError(
                        f"cannot listen on {config.host}:{config.port}: {reason}; set HOST and PORT to a free address"
                    ) from exc
                log.info("startup.http.listening", binds=binds)

                # 9. Background workers. Each runs its first pass before reporting started, and
                # on shutdown drains its own work within the grace period.
                await serving.start(run_webhook_delivery, services, control.requested)
                await serving.start(run_anomaly_detection, services, control.requested)
                log.info("startup.workers.started")

                control.started = True
                sdnotify.notify("READY=1")
                if on_ready is not None:
                    on_ready()
                watchdog_interval = sdnotify.watchdog_interval_seconds()
                if watchdog_interval is not None:
                    serving.start_soon(run_watchdog, watchdog_interval, control.requested)
                if config.key_encryption_key is not None:
                    serving.start_soon(run_key_refresh, config, db, key_ring, control.requested)
                log.info("startup.complete")
                await control.requested.wait()
                if config.shutdown_drain_delay_seconds > 0:
                    log.info("shutdown.drain_delay", seconds=config.shutdown_drain_delay_seconds)
                    await trio.sleep(config.shutdown_drain_delay_seconds)
                listener_stop.set()
                log.info("shutdown.draining", graceSeconds=config.shutdown_grace_seconds)
                # Leaving this block waits for Hypercorn to finish in-flight requests, with a
                # backstop in case a request ignores the grace period.
                serving.cancel_scope.deadline = trio.current_time() + config.shutdown_grace_seconds + 5
        log.info("shutdown.http.stopped", forced=control.serving_scope.cancelled_caught)
    log.info("shutdown.complete")


async def _close_redis(redis: RedisStore) -> None:
    await redis.close()
    log.info("shutdown.redis.closed")


async def _close_database(db: Database) -> None:
    await db.close()
    log.info("shutdown.database.closed")
