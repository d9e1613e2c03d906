"""The anomaly detection worker: one scan at startup, then one per ``ANOMALY_INTERVAL``.

With several instances, a scan runs on one instance at a time: each takes a PostgreSQL
advisory lock without waiting and skips the scan when another instance holds it. A failed
scan is logged and retried at the next interval; it never stops the process.
"""

from __future__ import annotations

import time

import trio

from grantexd.errors import DatabaseUnavailable
from grantexd.logging import get_logger
from grantexd.services import anomalies
from grantexd.services.context import Services
from grantexd.store.anomalies import ANOMALY_SCAN_LOCK

WORKER_NAME = "anomaly-detection"
log = get_logger(worker=WORKER_NAME)


async def scan_once(services: Services) -> int | None:
    """Run one scan if no other instance is running one; return the anomalies found, or None."""
    async with services.db.connection() as connection:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", ANOMALY_SCAN_LOCK):
            log.info("worker.scan.skipped", reason="another instance is scanning")
            return None
        try:
            found = await anomalies.detect(services, developer_id=None)
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await connection.execute("SELECT pg_advisory_unlock($1)", ANOMALY_SCAN_LOCK)
    return len(found)


async def run_anomaly_detection(
    services: Services, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    metrics = services.metrics
    started = False
    if stop.is_set():
        # Shutdown began before the first scan; startup still waits for this task to report.
        task_status.started()
        return
    while not stop.is_set():
        metrics.worker_iterations.labels(WORKER_NAME).inc()
        try:
            found = await scan_once(services)
        except (DatabaseUnavailable, OSError) as exc:
            metrics.worker_failures.labels(WORKER_NAME).inc()
            log.error("worker.iteration.failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a scan bug must not stop the daemon
            metrics.worker_failures.labels(WORKER_NAME).inc()
            log.error("worker.iteration.failed", error=repr(exc), exc_info=exc)
        else:
            metrics.worker_last_success.labels(WORKER_NAME).set(time.time())
            if found is not None:
                log.info("worker.iteration.done", anomalies=found)
        if not started:
            task_status.started()
            started = True
        with trio.move_on_after(services.config.anomaly_interval_seconds):
            await stop.wait()
