"""Anomaly routes: run a scan now, list what was found, and acknowledge an anomaly."""

from __future__ import annotations

from quart import Blueprint, Response, request

from grantexd.errors import BadRequest
from grantexd.http.requests import current_developer, read_page
from grantexd.http.responses import json_response
from grantexd.http.state import RuntimeState
from grantexd.services import anomalies
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("anomalies", __name__)

    @blueprint.post("/v1/anomalies/detect")
    async def detect() -> Response:
        developer = await current_developer(services)
        found = await anomalies.detect(services, developer.id)
        return json_response(
            {
                "detectedAt": to_iso(services.now()),
                "total": len(found),
                "anomalies": [anomalies.anomaly_json(anomaly) for anomaly in found],
            }
        )

    @blueprint.get("/v1/anomalies")
    async def list_anomalies() -> Response:
        developer = await current_developer(services)
        flag = request.args.get("unacknowledged", "false").lower()
        if flag not in ("true", "false"):
            raise BadRequest(f"unacknowledged must be true or false, got {flag[:50]!r}")
        page = read_page()
        found = await anomalies.list_anomalies(services, developer.id, flag == "true", page.limit, page.offset)
        return json_response({"anomalies": [anomalies.anomaly_json(anomaly) for anomaly in found], "total": len(found)})

    @blueprint.patch("/v1/anomalies/<anomaly_id>/acknowledge")
    async def acknowledge(anomaly_id: str) -> Response:
        developer = await current_developer(services)
        anomaly = await anomalies.acknowledge(services, developer.id, anomaly_id)
        return json_response(anomalies.anomaly_json(anomaly))

    return blueprint
