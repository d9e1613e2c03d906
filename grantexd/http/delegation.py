"""Delegation and grant-verification routes: ``/v1/grants/delegate`` and ``/v1/grants/verify``."""

from __future__ import annotations

from quart import Blueprint, Response

from grantexd.http.requests import current_developer, read_json_body
from grantexd.http.responses import json_response
from grantexd.http.state import RuntimeState
from grantexd.metrics import count_outcome
from grantexd.services import delegation
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("delegation", __name__)

    @blueprint.post("/v1/grants/delegate")
    async def delegate() -> Response:
        developer = await current_developer(services)
        with count_outcome(services.metrics.token_operations, "delegate"):
            issued, depth = await delegation.delegate(services, developer, await read_json_body())
        return json_response(
            {
                "grantToken": issued.grant_token,
                "expiresAt": to_iso(issued.expires_at),
                "scopes": issued.scopes,
                "grantId": issued.grant_id,
                "refreshToken": issued.refresh_token,
                "delegationDepth": depth,
            },
            201,
        )

    @blueprint.post("/v1/grants/verify")
    async def verify() -> Response:
        developer = await current_developer(services)
        return json_response(await delegation.verify_grant(services, developer, await read_json_body()))

    return blueprint
