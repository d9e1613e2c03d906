"""Prometheus metrics: one registry per process, with every series the daemon exports.

Labels are closed sets (route templates, outcomes, status classes), never raw paths or ids, so
a scan of unknown URLs cannot create new series.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from grantexd import __version__
from grantexd.errors import GrantexError


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        registry = self.registry

        Info("grantexd_build", "Version of the running grantexd", registry=registry).info({"version": __version__})
        self.http_requests = Counter(
            "grantexd_http_requests",
            "HTTP requests served, by method, route template and status class",
            ["method", "route", "status_class"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "grantexd_http_request_duration_seconds",
            "Time from receiving a request to sending its response",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.token_operations = Counter(
            "grantexd_token_operations",
            "Token exchanges, refreshes, verifications and revocations, by outcome",
            ["operation", "outcome"],
            registry=registry,
        )
        self.authorizations = Counter(
            "grantexd_authorizations",
            "Authorization requests and consent decisions, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.grants_revoked = Counter(
            "grantexd_grants_revoked", "Grants revoked, descendants of a cascade included", registry=registry
        )
        self.rate_limited = Counter(
            "grantexd_rate_limited_requests", "Requests rejected by a rate limit, by limit", ["scope"], registry=registry
        )
        self.worker_iterations = Counter(
            "grantexd_worker_iterations", "Background worker iterations, by worker", ["worker"], registry=registry
        )
        self.worker_failures = Counter(
            "grantexd_worker_failures", "Background worker iterations that failed", ["worker"], registry=registry
        )
        self.worker_last_success = Gauge(
            "grantexd_worker_last_success_timestamp_seconds",
            "Unix time of each worker's last successful iteration",
            ["worker"],
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "grantexd_webhook_attempts", "Webhook delivery attempts, by outcome", ["outcome"], registry=registry
        )
        self.webhook_deliveries = Counter(
            "grantexd_webhook_deliveries",
            "Webhook deliveries that reached a final state, by state",
            ["state"],
            registry=registry,
        )
        self.anomalies_detected = Counter(
            "grantexd_anomalies_detected", "Anomalies recorded by the detection rules, by type", ["type"], registry=registry
        )
        self.db_pool_connections = Gauge(
            "grantexd_db_pool_connections", "PostgreSQL pool connections, by state", ["state"], registry=registry
        )
        self.redis_up = Gauge(
            "grantexd_redis_up", "1 when the last Redis call succeeded, 0 when Redis is unavailable", registry=registry
        )


@contextmanager
def count_outcome(counter: Counter, operation: str) -> Iterator[None]:
    """Count ``operation`` as success, or as failure when a domain error escapes the block."""
    try:
        yield
    except GrantexError:
        counter.labels(operation, "failure").inc()
        raise
    counter.labels(operation, "success").inc()
