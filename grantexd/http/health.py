"""Health probes: ``/health`` for load balancers, ``/health/live`` and ``/health/ready``."""

from __future__ import annotations

import trio
from quart import Blueprint, Response

from grantexd.errors import DatabaseUnavailable
from grantexd.http.responses import json_response
from grantexd.logging import get_logger
from grantexd.http.state import RuntimeState
from grantexd.services.context import Services
from grantexd.store.redis import RedisUnavailable

log = get_logger()


async def probe_dependencies(services: Services) -> list[str]:
    """Probe PostgreSQL and Redis concurrently, each under the health timeout; return failures."""
    failing: dict[str, bool] = {"db": True, "redis": True}
    timeout = services.config.health_timeout_seconds

    async def probe_database() -> None:
        with trio.move_on_after(timeout):
            try:
                await services.db.probe()
                failing["db"] = False
            except DatabaseUnavailable as exc:
                log.debug("health.db.failed", error=str(exc))

    async def probe_redis() -> None:
        with trio.move_on_after(timeout):
            try:
                await services.redis.ping()
                failing["redis"] = False
            except RedisUnavailable as exc:
                log.debug("health.redis.failed", error=str(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe_database)
        nursery.start_soon(probe_redis)
    return [name for name in ("db", "redis") if failing[name]]


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("health", __name__)

    async def dependency_status() -> Response:
        failing = await probe_dependencies(services)
        if failing:
            return json_response({"status": "degraded", "failing": failing}, 503)
        return json_response({"status": "ok"})

    @blueprint.get("/health")
    async def health() -> Response:
        return await dependency_status()

    @blueprint.get("/health/live")
    async def live() -> Response:
        return json_response({"status": "ok"})

    @blueprint.get("/health/ready")
    async def ready() -> Response:
        if state.draining:
            return json_response({"status": "draining"}, 503)
        return await dependency_status()

    return blueprint
