"""Agent routes: create, list, get, update (PATCH, and POST as the Python SDK sends), delete."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from grantexd.http.requests import current_developer, read_json_body, read_page
from grantexd.http.responses import json_response, no_content
from grantexd.services import agents
from grantexd.http.state import RuntimeState
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso
from grantexd.store.agents import Agent


def agent_json(agent: Agent) -> dict[str, Any]:
    return {
        "agentId": agent.id,
        "did": agent.did,
        "developerId": agent.developer_id,
        "name": agent.name,
        "description": agent.description,
        "scopes": agent.scopes,
        "redirectUris": agent.redirect_uris,
        "status": agent.status,
        "createdAt": to_iso(agent.created_at),
        "updatedAt": to_iso(agent.updated_at),
    }


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("agents", __name__)

    @blueprint.post("/v1/agents")
    async def create_agent() -> Response:
        developer = await current_developer(services)
        agent = await agents.create_agent(services, developer, await read_json_body())
        return json_response(agent_json(agent), 201)

    @blueprint.get("/v1/agents")
    async def list_agents() -> Response:
        developer = await current_developer(services)
        page = read_page()
        found = await agents.list_agents(services, developer, page.limit, page.offset)
        return json_response({"agents": [agent_json(agent) for agent in found]})

    @blueprint.get("/v1/agents/<agent_id>")
    async def get_agent(agent_id: str) -> Response:
        developer = await current_developer(services)
        return json_response(agent_json(await agents.get_agent(services, developer, agent_id)))

    @blueprint.route("/v1/agents/<agent_id>", methods=["PATCH", "POST"])
    async def update_agent(agent_id: str) -> Response:
        developer = await current_developer(services)
        agent = await agents.update_agent(services, developer, agent_id, await read_json_body())
        return json_response(agent_json(agent))

    @blueprint.delete("/v1/agents/<agent_id>")
    async def delete_agent(agent_id: str) -> Response:
        developer = await current_developer(services)
        await agents.delete_agent(services, developer, agent_id)
        return no_content()

    return blueprint
