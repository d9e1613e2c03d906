"""Authorization routes: ``/v1/authorize``, the sandbox shortcuts, and the consent JSON API."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response
from quart import request as quart_request

from grantexd.errors import Forbidden
from grantexd.http.limits import enforce_authorize_limit
from grantexd.http.requests import current_developer, is_cross_site_post, read_json_body, trusted_origins
from grantexd.http.responses import json_response
from grantexd.http.state import RuntimeState
from grantexd.services import authorization
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso
from grantexd.store.auth_requests import AuthRequest


def _redirect_fields(request: AuthRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if request.redirect_uri:
        fields["redirectUri"] = request.redirect_uri
    if request.state:
        fields["state"] = request.state
    return fields


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("authorize", __name__)

    @blueprint.post("/v1/authorize")
    async def authorize() -> Response:
        developer = await current_developer(services)
        request_body = await read_json_body()
        if isinstance(request_body, dict):
            # A body that is not an object is a 400 before it counts against the limit.
            await enforce_authorize_limit(services, developer.id)
        result = await authorization.authorize(services, developer, request_body)
        request = result.request
        body: dict[str, Any] = {
            "authRequestId": request.id,
            "consentUrl": result.consent_url,
            "expiresAt": to_iso(request.expires_at),
            "agentId": request.agent_id,
            "principalId": request.principal_id,
            "scopes": request.scopes,
            "expiresIn": request.expires_in,
            "status": request.status,
            "createdAt": to_iso(request.created_at),
        }
        if result.sandbox:
            body["sandbox"] = True
            body["code"] = request.code
        return json_response(body, 201)

    @blueprint.post("/v1/authorize/<request_id>/approve")
    async def approve_sandbox(request_id: str) -> Response:
        developer = await current_developer(services)
        request = await authorization.approve_sandbox(services, developer, request_id)
        return json_response({"requestId": request.id, "status": "approved", "code": request.code})

    @blueprint.post("/v1/authorize/<request_id>/deny")
    async def deny_sandbox(request_id: str) -> Response:
        developer = await current_developer(services)
        request = await authorization.deny_sandbox(services, developer, request_id)
        return json_response({"requestId": request.id, "status": "denied"})

    @blueprint.get("/v1/consent/<request_id>")
    async def get_consent(request_id: str) -> Response:
        details = await authorization.get_consent(services, request_id)
        view = details.view
        return json_response(
            {
                "id": view.request.id,
                "agentName": view.agent_name,
                "agentDid": view.agent_did,
                "agentDescription": view.agent_description,
                "developerName": view.developer_name,
                "scopes": view.request.scopes,
                "scopeDescriptions": details.scope_descriptions,
                "expiresAt": to_iso(view.request.expires_at),
                "status": view.request.status,
                "fidoRequired": view.fido_required,
            }
        )

    allowed_origins = trusted_origins(services.config)

    def reject_cross_site() -> None:
        # These endpoints take no credentials, so a page on another site could otherwise make
        # a visitor's browser decide a request whose id it knows.
        if is_cross_site_post(quart_request.headers, allowed_origins):
            origin = quart_request.headers.get("Origin", "unknown")
            raise Forbidden(f"Consent decisions from origin {origin[:200]!r} are not allowed")

    @blueprint.post("/v1/consent/<request_id>/approve")
    async def approve_consent(request_id: str) -> Response:
        reject_cross_site()
        request = await authorization.approve_consent(services, request_id)
        return json_response({"code": request.code, **_redirect_fields(request)})

    @blueprint.post("/v1/consent/<request_id>/deny")
    async def deny_consent(request_id: str) -> Response:
        reject_cross_site()
        request = await authorization.deny_consent(services, request_id)
        return json_response(_redirect_fields(request))

    return blueprint
