"""Principal routes: creating a dashboard session, and the end user's own grants and audit trail."""

from __future__ import annotations

from quart import Blueprint, Response, request

from grantexd.http.requests import current_developer, read_json_body
from grantexd.http.responses import json_response, no_content
from grantexd.http.state import RuntimeState
from grantexd.services import principals
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("principal", __name__)

    @blueprint.post("/v1/principal-sessions")
    async def create_session() -> Response:
        developer = await current_developer(services)
        session = await principals.create_session(services, developer, await read_json_body())
        session["expiresAt"] = to_iso(session["expiresAt"])
        return json_response(session, 201)

    @blueprint.get("/v1/principal/grants")
    async def list_grants() -> Response:
        session = principals.authenticate_session(services, request.headers.get("Authorization"))
        grants = await principals.list_grants(services, session)
        return json_response(
            {
                "grants": [
                    {
                        "grantId": grant.id,
                        "agentId": grant.agent_id,
                        "agentName": grant.agent_name,
                        "agentDescription": grant.agent_description,
                        "agentDid": grant.agent_did,
                        "scopes": grant.scopes,
                        "status": grant.status,
                        "issuedAt": to_iso(grant.issued_at),
                        "expiresAt": to_iso(grant.expires_at),
                        "delegationDepth": grant.delegation_depth,
                    }
                    for grant in grants
                ],
                "principalId": session.principal_id,
            }
        )

    @blueprint.get("/v1/principal/audit")
    async def list_audit() -> Response:
        session = principals.authenticate_session(services, request.headers.get("Authorization"))
        entries = await principals.list_audit(services, session)
        for entry in entries:
            entry["timestamp"] = to_iso(entry["timestamp"])
        return json_response({"entries": entries})

    @blueprint.delete("/v1/principal/grants/<grant_id>")
    async def revoke_grant(grant_id: str) -> Response:
        session = principals.authenticate_session(services, request.headers.get("Authorization"))
        await principals.revoke_grant(services, session, grant_id)
        return no_content()

    return blueprint
