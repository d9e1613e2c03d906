"""Token routes: code exchange, online verification and single-token revocation."""

from __future__ import annotations

from quart import Blueprint, Response, request

from grantexd.http.requests import current_developer, read_json_body
from grantexd.http.responses import json_response, no_content
from grantexd.http.state import RuntimeState
from grantexd.metrics import count_outcome
from grantexd.services import refresh as refresh_service
from grantexd.services import revocation, tokens
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("tokens", __name__)

    @blueprint.post("/v1/token")
    async def exchange() -> Response:
        developer = await current_developer(services)
        with count_outcome(services.metrics.token_operations, "exchange"):
            issued = await tokens.exchange_code(services, developer, await read_json_body())
        return json_response(
            {
                "grantToken": issued.grant_token,
                "expiresAt": to_iso(issued.expires_at),
                "scopes": issued.scopes,
                "refreshToken": issued.refresh_token,
                "grantId": issued.grant_id,
            },
            201,
        )

    @blueprint.post("/v1/token/refresh")
    async def refresh() -> Response:
        developer = await current_developer(services)
        with count_outcome(services.metrics.token_operations, "refresh"):
            body = await refresh_service.refresh_grant(
                services, developer, await read_json_body(), request.headers.get("Idempotency-Key")
            )
        return json_response(body, 201)

    @blueprint.post("/v1/tokens/verify")
    async def verify() -> Response:
        developer = await current_developer(services)
        result = await tokens.verify_token(services, developer, await read_json_body())
        services.metrics.token_operations.labels("verify", "valid" if result.valid else "invalid").inc()
        return json_response(result.to_json())

    @blueprint.post("/v1/tokens/revoke")
    async def revoke() -> Response:
        developer = await current_developer(services)
        with count_outcome(services.metrics.token_operations, "revoke"):
            await revocation.revoke_token(services, developer.id, await read_json_body())
        return no_content()

    return blueprint
