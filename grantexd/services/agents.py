"""Agent registration and management, scoped to the calling developer."""

from __future__ import annotations

from grantexd.crypto.ids import new_id
from grantexd.errors import BadRequest, NotFound, PlanLimitExceeded
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.services.plans import plan_limits, plan_name
from grantexd.services.validation import check_redirect_uri_list, check_scope_list
from grantexd.store import agents as agent_store
from grantexd.store.agents import Agent
from grantexd.store.developers import Developer

log = get_logger()

_AGENT_QUOTA_LOCK = 2


async def create_agent(services: Services, developer: Developer, body: object) -> Agent:
    if not isinstance(body, dict):
        raise BadRequest("name is required")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("name is required")
    description = body.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise BadRequest("description must be a string")
    scopes = check_scope_list(body.get("scopes", []) if body.get("scopes") is not None else [])
    redirect_uris = body.get("redirectUris")
    checked_redirect_uris = (
        [] if redirect_uris is None else check_redirect_uri_list(redirect_uris, services.config.is_production)
    )

    limits = plan_limits(developer.plan)
    async with services.db.transaction() as tx:
        await tx.advisory_lock(developer.id, _AGENT_QUOTA_LOCK)
        if limits.agents is not None and await agent_store.count_agents(tx, developer.id) >= limits.agents:
            raise PlanLimitExceeded(
                f"Plan limit reached: {plan_name(developer.plan)} plan allows {limits.agents} agent(s). "
                "Upgrade at /v1/billing/checkout"
            )
        agent = await agent_store.insert_agent(
            tx, new_id("ag"), developer.id, name.strip(), description, scopes, checked_redirect_uris
        )
    log.info("agent.created", developerId=developer.id, agentId=agent.id)
    return agent


async def list_agents(services: Services, developer: Developer, limit: int | None, offset: int) -> list[Agent]:
    return await agent_store.list_agents(services.db, developer.id, limit, offset)


async def get_agent(services: Services, developer: Developer, agent_id: str) -> Agent:
    agent = await agent_store.find_agent(services.db, developer.id, agent_id)
    if agent is None:
        raise NotFound("Agent not found")
    return agent


async def update_agent(services: Services, developer: Developer, agent_id: str, body: object) -> Agent:
    known = ("name", "description", "scopes", "status", "redirectUris")
    if not isinstance(body, dict) or not any(body.get(field) is not None for field in known):
        raise BadRequest("No fields to update")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise BadRequest("name must be a non-empty string")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest("description must be a string")
    status = body.get("status")
    if status is not None and status not in ("active", "suspended"):
        raise BadRequest("status must be active or suspended")
    scopes = body.get("scopes")
    checked_scopes = None if scopes is None else check_scope_list(scopes)
    redirect_uris = body.get("redirectUris")
    checked_redirect_uris = (
        None if redirect_uris is None else check_redirect_uri_list(redirect_uris, services.config.is_production)
    )
    agent = await agent_store.update_agent(
        services.db,
        developer.id,
        agent_id,
        name.strip() if isinstance(name, str) else None,
        description,
        checked_scopes,
        checked_redirect_uris,
        status,  # type: ignore[arg-type]
    )
    if agent is None:
        raise NotFound("Agent not found")
    log.info("agent.updated", developerId=developer.id, agentId=agent_id)
    return agent


async def delete_agent(services: Services, developer: Developer, agent_id: str) -> None:
    async with services.db.transaction() as tx:
        deleted = await agent_store.delete_agent(tx, developer.id, agent_id)
    if not deleted:
        raise NotFound("Agent not found")
    log.info("agent.deleted", developerId=developer.id, agentId=agent_id)
