"""Developer account routes: signup, ``/v1/me`` and API-key rotation."""

from __future__ import annotations

from quart import Blueprint, Response, request

from grantexd.errors import BadRequest
from grantexd.http.requests import current_developer, read_json_body
from grantexd.http.responses import json_response
from grantexd.services import accounts
from grantexd.http.state import RuntimeState
from grantexd.services.context import Services
from grantexd.services.plans import plan_name
from grantexd.services.timefmt import to_iso


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("accounts", __name__)

    @blueprint.post("/v1/signup")
    async def signup() -> Response:
        body = await read_json_body()
        if not isinstance(body, dict):
            raise BadRequest("name must be 1 to 200 characters")
        name, email, mode = accounts.validate_signup(body)
        result = await accounts.sign_up(services, name, email, mode)
        developer = result.developer
        return json_response(
            {
                "developerId": developer.id,
                "apiKey": result.api_key,
                "name": developer.name,
                "email": developer.email,
                "mode": developer.mode,
                "createdAt": to_iso(developer.created_at),
            },
            201,
        )

    @blueprint.get("/v1/me")
    async def me() -> Response:
        developer = await current_developer(services)
        developer = await accounts.get_developer(services, developer.id)
        return json_response(
            {
                "developerId": developer.id,
                "name": developer.name,
                "email": developer.email,
                "mode": developer.mode,
                "plan": plan_name(developer.plan),
                "fidoRequired": developer.fido_required,
                "fidoRpName": developer.fido_rp_name,
                "createdAt": to_iso(developer.created_at),
            }
        )

    @blueprint.patch("/v1/me")
    async def update_me() -> Response:
        developer = await current_developer(services)
        body = await read_json_body()
        await accounts.update_settings(services, developer.id, body if isinstance(body, dict) else {})
        return json_response({"updated": True})

    @blueprint.post("/v1/keys/rotate")
    async def rotate_key() -> Response:
        developer = await current_developer(services)
        api_key, rotated_at = await accounts.rotate_api_key(
            services, developer, request.headers.get("Authorization")
        )
        return json_response({"apiKey": api_key, "rotatedAt": to_iso(rotated_at)})

    return blueprint
