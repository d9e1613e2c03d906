"""``GET /metrics`` in the Prometheus text format, and the per-request series."""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, request

from grantexd.errors import Unauthorized
from grantexd.http.state import RuntimeState
from grantexd.services.context import Services


def record_request(services: Services, method: str, route: str | None, status: int, seconds: float) -> None:
    # Unmatched paths share one label value, so scanning random URLs creates no new series.
    label = route or "unmatched"
    services.metrics.http_requests.labels(method, label, f"{status // 100}xx").inc()
    services.metrics.http_duration.labels(method, label).observe(seconds)


def _update_gauges(services: Services) -> None:
    size, in_use = services.db.pool_usage()
    services.metrics.db_pool_connections.labels("open").set(size)
    services.metrics.db_pool_connections.labels("in_use").set(in_use)
    services.metrics.redis_up.set(1 if services.redis.available else 0)


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("metrics", __name__)
    expected = services.config.metrics_api_key

    @blueprint.get("/metrics")
    async def metrics() -> Response:
        if expected is not None:
            supplied = request.headers.get("Authorization", "")
            expected_header = f"Bearer {expected.reveal()}"
            if not hmac.compare_digest(supplied.encode(), expected_header.encode()):
                raise Unauthorized("Missing or invalid metrics bearer token (METRICS_API_KEY)")
        _update_gauges(services)
        return Response(generate_latest(services.metrics.registry), status=200, content_type=CONTENT_TYPE_LATEST)

    return blueprint
