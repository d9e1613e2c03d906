"""The webhook delivery worker: claims due deliveries, sends them, and records each outcome.

The worker runs one claim pass at startup, then another whenever PostgreSQL notifies it of new
rows (LISTEN on a dedicated connection), when an attempt finishes, when a scheduled retry
falls due, and at the latest every ``POLL_INTERVAL_SECONDS``. A claim leases rows
(``store.webhooks.claim_due_deliveries``), so any number of instances can run this worker
without sending a delivery twice while its lease holds.

Attempts run concurrently, at most ``MAX_IN_FLIGHT`` at once and at most
``MAX_IN_FLIGHT_PER_WEBHOOK`` for one endpoint, so one slow receiver cannot hold up the
others. A failed attempt is retried after ``WEBHOOK_RETRY_DELAY * 2**(attempt - 1)`` seconds
(30, 60, 120, 240 and 480 s by default) until the row's ``max_attempts`` is used up, and the
row is then ``failed``.

On shutdown the worker stops claiming and gives attempts in flight the shutdown grace period.
With the defaults (a 30 s grace period, 10 s per attempt) every attempt ends within it and
its outcome is recorded. Attempts still running after the grace period are cancelled. Their rows stay pending, due at once, so the
next worker to start retries them. If even that update fails, the lease expires and the row is
retried then.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable

import httpx
import trio

from grantexd.errors import DatabaseUnavailable
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.services.webhooks import target_policy
from grantexd.store import webhooks as webhook_store
from grantexd.store.notifications import NotificationListener
from grantexd.store.webhooks import ClaimedDelivery
from grantexd.tracing import span
from grantexd.workers.webhook_sender import AttemptResult, OutgoingDelivery, open_client, send_attempt

WORKER_NAME = "webhook-delivery"
log = get_logger(worker=WORKER_NAME)

POLL_INTERVAL_SECONDS = 30.0
MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_PER_WEBHOOK = 4
# A lease outlasts the attempt timeout by this much, which covers recording the outcome.
LEASE_MARGIN_SECONDS = 50.0
# How long recording an outcome may take, even during shutdown.
RECORD_TIMEOUT_SECONDS = 5.0
# The pause before claiming again when due rows exist but another instance is locking them.
CONTENDED_RETRY_SECONDS = 0.1


class _Wakeup:
    """A wake-up signal that coalesces: any number of ``set`` calls end one ``wait``."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_seconds: float) -> None:
        with trio.move_on_after(timeout_seconds):
            await self._event.wait()
        # Signals that arrive from here on wake the next wait. The claim that follows reads
        # every row committed before this point, so a signal folded into this one is not lost.
        self._event = trio.Event()


class _DeliveryWorker:
    def __init__(self, services: Services, client: httpx.AsyncClient, attempts: trio.Nursery) -> None:
        self.services = services
        self.client = client
        self.attempts = attempts
        self.timeout_seconds = services.config.webhook_timeout_seconds
        self.retry_delay_seconds = services.config.webhook_retry_delay_seconds
        self.wakeup = _Wakeup()
        self.listener: NotificationListener | None = None
        self.listener_failing = False
        self.in_flight: dict[str, int] = {}
        self.in_flight_total = 0
        self.drained = trio.Event()
        self.drained.set()

    async def ensure_listener(self) -> None:
        """Open the LISTEN connection if it is missing or lost.

        Without it the worker still delivers, but only on the poll interval, so a failure is
        logged once and claiming goes on.
        """
        if self.listener is not None and self.listener.is_connected:
            return
        if self.listener is not None:
            await self.listener.close()
            self.listener = None
            log.warning("webhook.listener.lost")
        try:
            self.listener = await NotificationListener.open(
                self.services.db.settings, webhook_store.DELIVERY_CHANNEL, self.wakeup.set
            )
        except DatabaseUnavailable as exc:
            if not self.listener_failing:
                log.error("webhook.listener.failed", error=exc.message, pollIntervalSeconds=POLL_INTERVAL_SECONDS)
            self.listener_failing = True
            return
        if self.listener_failing:
            log.info("webhook.listener.reconnected")
        self.listener_failing = False

    async def close_listener(self) -> None:
        if self.listener is not None:
            await self.listener.close()
            self.listener = None

    async def run_iteration(self) -> float:
        """Claim and start due deliveries; return how long to wait before the next pass."""
        metrics = self.services.metrics
        metrics.worker_iterations.labels(WORKER_NAME).inc()
        try:
            await self.ensure_listener()
            wait_seconds = await self._claim_and_start()
        # The worker must outlive any failure of one pass, whatever its cause: the error is
        # logged with its traceback and the pass is retried at the next interval.
        except Exception as exc:
            metrics.worker_failures.labels(WORKER_NAME).inc()
            log.error(
                "worker.iteration.failed",
                error=str(exc) or type(exc).__name__,
                retryInSeconds=POLL_INTERVAL_SECONDS,
                exc_info=not isinstance(exc, DatabaseUnavailable),
            )
            return POLL_INTERVAL_SECONDS
        metrics.worker_last_success.labels(WORKER_NAME).set(time.time())
        return wait_seconds

    async def _claim_and_start(self) -> float:
        limit = MAX_IN_FLIGHT - self.in_flight_total
        if limit <= 0:
            # A finishing attempt wakes the worker.
            return POLL_INTERVAL_SECONDS
        lease_id = uuid.uuid4().hex
        claimed = await webhook_store.claim_due_deliveries(
            self.services.db,
            limit=limit,
            per_webhook_limit=MAX_IN_FLIGHT_PER_WEBHOOK,
            in_flight=dict(self.in_flight),
            lease_id=lease_id,
            lease_seconds=self.timeout_seconds + LEASE_MARGIN_SECONDS,
        )
        for delivery in claimed:
            self._count_started(delivery.webhook_id)
            self.attempts.start_soon(self._run_attempt, delivery, lease_id)
        if claimed and len(claimed) == limit:
            return 0.0
        at_limit = [webhook_id for webhook_id, running in self.in_flight.items() if running >= MAX_IN_FLIGHT_PER_WEBHOOK]
        seconds = await webhook_store.seconds_until_next_due(self.services.db, at_limit)
        if seconds is None:
            return POLL_INTERVAL_SECONDS
        if seconds <= 0:
            return 0.0 if claimed else CONTENDED_RETRY_SECONDS
        return min(seconds, POLL_INTERVAL_SECONDS)

    def _count_started(self, webhook_id: str) -> None:
        self.in_flight[webhook_id] = self.in_flight.get(webhook_id, 0) + 1
        self.in_flight_total += 1
        if self.drained.is_set():
            self.drained = trio.Event()

    def _count_finished(self, webhook_id: str) -> None:
        remaining = self.in_flight[webhook_id] - 1
        if remaining:
            self.in_flight[webhook_id] = remaining
        else:
            del self.in_flight[webhook_id]
        self.in_flight_total -= 1
        if self.in_flight_total == 0:
            self.drained.set()
        self.wakeup.set()

    async def _run_attempt(self, delivery: ClaimedDelivery, lease_id: str) -> None:
        try:
            outgoing = OutgoingDelivery(
                url=delivery.url,
                body=delivery.body,
                secret=delivery.secret,
                previous_secret=delivery.previous_secret,
            )
            try:
                with span("webhook.attempt", deliveryId=delivery.id, attempt=delivery.attempt) as attempt_span:
                    result = await send_attempt(
                        self.client, outgoing, target_policy(self.services), self.timeout_seconds
                    )
                    attempt_span.set_attribute("webhook.delivered", result.delivered)
            except trio.Cancelled:
                await self._shielded(self._release(delivery, lease_id), "webhook.delivery.release_failed", delivery)
                raise
            # A defect while sending must not stop other deliveries or leave this row leased:
            # it is logged with its traceback and recorded as a failed attempt.
            except Exception as exc:
                log.error("webhook.delivery.send_crashed", deliveryId=delivery.id, error=repr(exc), exc_info=True)
                result = AttemptResult(delivered=False, error="internal error while sending; see the grantexd log")
            await self._shielded(self._record(delivery, lease_id, result), "webhook.delivery.record_failed", delivery)
        finally:
            self._count_finished(delivery.webhook_id)

    async def _shielded(self, operation: Awaitable[None], failure_event: str, delivery: ClaimedDelivery) -> None:
        """Finish a database update even while shutdown cancels the attempt, within a deadline."""
        with trio.move_on_after(RECORD_TIMEOUT_SECONDS) as scope:
            scope.shield = True
            try:
                await operation
            # A row whose update fails keeps its lease until it expires and is retried then.
            except Exception as exc:
                log.error(failure_event, deliveryId=delivery.id, error=str(exc) or type(exc).__name__)
        if scope.cancelled_caught:
            log.error(failure_event, deliveryId=delivery.id, error=f"timed out after {RECORD_TIMEOUT_SECONDS:g} seconds")

    async def _release(self, delivery: ClaimedDelivery, lease_id: str) -> None:
        await webhook_store.release_lease(
            self.services.db, delivery.id, lease_id, "the attempt was interrupted by a shutdown; it will be retried"
        )
        self.services.metrics.webhook_attempts.labels("interrupted").inc()
        log.info("webhook.delivery.interrupted", deliveryId=delivery.id, attempt=delivery.attempt)

    async def _record(self, delivery: ClaimedDelivery, lease_id: str, result: AttemptResult) -> None:
        metrics = self.services.metrics
        fields = {
            "deliveryId": delivery.id,
            "webhookId": delivery.webhook_id,
            "attempt": delivery.attempt,
            "statusCode": result.status_code,
        }
        if result.delivered:
            assert result.status_code is not None
            recorded = await webhook_store.record_delivered(self.services.db, delivery.id, lease_id, result.status_code)
            metrics.webhook_attempts.labels("success").inc()
            if recorded:
                metrics.webhook_deliveries.labels("delivered").inc()
                log.info("webhook.delivery.succeeded", **fields)
            else:
                log.warning("webhook.delivery.lease_lost", **fields)
            return

        error = result.error or "unknown error"
        retry_delay = self.retry_delay_seconds * 2 ** (delivery.attempt - 1)
        status = await webhook_store.record_failed_attempt(
            self.services.db, delivery.id, lease_id, result.status_code, error, retry_delay
        )
        metrics.webhook_attempts.labels("failure").inc()
        if status is None:
            log.warning("webhook.delivery.lease_lost", error=error, **fields)
        elif status == "failed":
            metrics.webhook_deliveries.labels("failed").inc()
            log.warning("webhook.delivery.failed", error=error, maxAttempts=delivery.max_attempts, **fields)
        else:
            log.warning("webhook.delivery.retry_scheduled", error=error, retryInSeconds=retry_delay, **fields)


async def run_webhook_delivery(
    services: Services, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Deliver webhooks until ``stop`` is set, then drain attempts in flight within the grace period.

    Reports started once the first claim pass has ended, whether or not it succeeded.
    """
    grace_seconds = services.config.shutdown_grace_seconds
    async with open_client(services.config.webhook_timeout_seconds) as client:
        async with trio.open_nursery() as attempts:
            worker = _DeliveryWorker(services, client, attempts)
            try:
                log.info("worker.started", pollIntervalSeconds=POLL_INTERVAL_SECONDS)
                # Setting stop cancels a claim pass at once, even one stuck on a hung database.
                reported_started = False
                with trio.CancelScope() as claiming:
                    attempts.start_soon(_cancel_on, stop, claiming)
                    wait_seconds = await worker.run_iteration()
                    task_status.started()
                    reported_started = True
                    while True:
                        if wait_seconds > 0:
                            await worker.wakeup.wait(wait_seconds)
                        wait_seconds = await worker.run_iteration()
                if not reported_started:
                    # Shutdown began during the first pass.
                    task_status.started()

                log.info("worker.draining", inFlight=worker.in_flight_total, graceSeconds=grace_seconds)
                with trio.move_on_after(grace_seconds):
                    await worker.drained.wait()
                if worker.in_flight_total:
                    log.warning("worker.attempts.cancelled", inFlight=worker.in_flight_total)
                attempts.cancel_scope.cancel()
            finally:
                await worker.close_listener()
    log.info("worker.stopped")


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
