"""Grant routes: list, get and revoke with cascade."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from grantexd.http.requests import current_developer, query_text, read_page
from grantexd.http.responses import json_response, no_content
from grantexd.http.state import RuntimeState
from grantexd.services import grants, revocation
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso
from grantexd.store.grants import Grant, GrantFilter


def grant_json(grant: Grant) -> dict[str, Any]:
    body: dict[str, Any] = {
        "grantId": grant.id,
        "agentId": grant.agent_id,
        "agentDid": grant.agent_did,
        "principalId": grant.principal_id,
        "developerId": grant.developer_id,
        "scopes": grant.scopes,
        "status": grant.status,
        "issuedAt": to_iso(grant.issued_at),
        "expiresAt": to_iso(grant.expires_at),
    }
    if grant.revoked_at is not None:
        body["revokedAt"] = to_iso(grant.revoked_at)
    body["delegationDepth"] = grant.delegation_depth
    if grant.parent_grant_id is not None:
        body["parentGrantId"] = grant.parent_grant_id
    return body


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("grants", __name__)

    @blueprint.get("/v1/grants")
    async def list_grants() -> Response:
        developer = await current_developer(services)
        page = read_page()
        filters = GrantFilter(
            agent_id=query_text("agentId"), principal_id=query_text("principalId"), status=query_text("status")
        )
        found = await grants.list_grants(services, developer, filters, page.limit, page.offset)
        return json_response({"grants": [grant_json(grant) for grant in found]})

    @blueprint.get("/v1/grants/<grant_id>")
    async def get_grant(grant_id: str) -> Response:
        developer = await current_developer(services)
        return json_response(grant_json(await grants.get_grant(services, developer, grant_id)))

    @blueprint.delete("/v1/grants/<grant_id>")
    async def revoke_grant(grant_id: str) -> Response:
        developer = await current_developer(services)
        await revocation.revoke_grant(services, developer.id, grant_id)
        return no_content()

    return blueprint
