"""Audit routes: append an entry, list the chain, get one entry. The log has no update or delete."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from quart import Blueprint, Response

from grantexd.errors import BadRequest
from grantexd.http.requests import current_developer, query_text, read_json_body, read_page
from grantexd.http.responses import json_response
from grantexd.http.state import RuntimeState
from grantexd.services import audit
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso
from grantexd.store.audit import AuditEntry, AuditFilter


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "entryId": entry.id,
        "agentId": entry.agent_id,
        "agentDid": entry.agent_did,
        "grantId": entry.grant_id,
        "principalId": entry.principal_id,
        "developerId": entry.developer_id,
        "action": entry.action,
        "metadata": entry.metadata,
        "hash": entry.hash,
        "prevHash": entry.prev_hash,
        "timestamp": to_iso(entry.timestamp),
        "status": entry.status,
    }


def read_time_parameter(name: str) -> datetime | None:
    """Parse an ISO-8601 query parameter. A value without a UTC offset is taken as UTC."""
    text = query_text(name)
    if text is None:
        return None
    problem = f"{name} must be an ISO-8601 timestamp such as 2026-02-01T12:34:56.789Z, got {text!r}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(problem) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        # A UTC offset can move year 1 or year 9999 out of range.
        raise BadRequest(problem) from None


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("audit", __name__)

    @blueprint.post("/v1/audit/log")
    async def log_entry() -> Response:
        developer = await current_developer(services)
        entry = await audit.log_entry(services, developer, await read_json_body())
        return json_response(entry_json(entry), 201)

    @blueprint.get("/v1/audit/entries")
    async def list_entries() -> Response:
        developer = await current_developer(services)
        page = read_page()
        filters = AuditFilter(
            agent_id=query_text("agentId"),
            grant_id=query_text("grantId"),
            principal_id=query_text("principalId"),
            action=query_text("action"),
            since=read_time_parameter("since"),
            until=read_time_parameter("until"),
        )
        found = await audit.list_entries(services, developer, filters, page.limit, page.offset)
        return json_response({"entries": [entry_json(entry) for entry in found]})

    @blueprint.get("/v1/audit/<entry_id>")
    async def get_entry(entry_id: str) -> Response:
        developer = await current_developer(services)
        return json_response(entry_json(await audit.get_entry(services, developer, entry_id)))

    return blueprint
