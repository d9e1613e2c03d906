"""``/.well-known/jwks.json``: the public keys that verify grant tokens."""

from __future__ import annotations

from quart import Blueprint, Response

from grantexd.http.responses import json_response
from grantexd.http.state import RuntimeState
from grantexd.services.context import Services


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("well_known", __name__)

    @blueprint.get("/.well-known/jwks.json")
    async def jwks() -> Response:
        return json_response(services.keys.jwks())

    return blueprint
