"""Agents over HTTP: create, list, get, update (PATCH and the SDK's POST), delete."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.protocol_support import (
    ISO_TIMESTAMP,
    ULID,
    assert_error,
    create_agent,
    database_url,
    issue_grant,
    new_developer,
)
from tests.support import Daemon, query

SCOPE_FORMAT = "Invalid scope format"
TOO_MANY_SCOPES = "Too many scopes (max 100)"


def test_create_agent_response(client: httpx.Client) -> None:
    developer = new_developer(client)
    response = client.post(
        "/v1/agents",
        json={"name": "  travel-agent  ", "description": "Books trips", "scopes": ["calendar:read", "x" * 256]},
        headers=developer.headers,
    )
    assert response.status_code == 201, response.text
    agent = response.json()
    assert re.fullmatch(f"ag_{ULID}", agent["agentId"])
    assert agent["did"] == f"did:grantex:{agent['agentId']}"
    assert agent["developerId"] == developer.id
    assert agent["name"] == "travel-agent"
    assert agent["description"] == "Books trips"
    assert agent["scopes"] == ["calendar:read", "x" * 256]
    assert agent["status"] == "active"
    assert ISO_TIMESTAMP.match(agent["createdAt"])
    assert agent["updatedAt"] == agent["createdAt"]


def test_create_agent_defaults(client: httpx.Client) -> None:
    developer = new_developer(client)
    response = client.post("/v1/agents", json={"name": "bare"}, headers=developer.headers)
    assert response.status_code == 201, response.text
    agent = response.json()
    assert agent["description"] == ""
    assert agent["scopes"] == []


def test_create_agent_hundred_scopes(client: httpx.Client) -> None:
    developer = new_developer(client)
    scopes = [f"scope:{index}" for index in range(100)]
    response = client.post("/v1/agents", json={"name": "many", "scopes": scopes}, headers=developer.headers)
    assert response.status_code == 201, response.text
    assert response.json()["scopes"] == scopes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "name is required"),
        ("name", "name is required"),
        (7, "name is required"),
        ({}, "name is required"),
        ({"name": ""}, "name is required"),
        ({"name": "   "}, "name is required"),
        ({"name": 5}, "name is required"),
        ({"name": ["a"]}, "name is required"),
        ({"name": "", "description": 5, "scopes": "x"}, "name is required"),
        ({"name": "a", "description": 5}, "description must be a string"),
        ({"name": "a", "description": ["d"], "scopes": "x"}, "description must be a string"),
        ({"name": "a", "scopes": "calendar:read"}, SCOPE_FORMAT),
        ({"name": "a", "scopes": {"0": "calendar:read"}}, SCOPE_FORMAT),
        ({"name": "a", "scopes": [""]}, SCOPE_FORMAT),
        ({"name": "a", "scopes": ["x" * 257]}, SCOPE_FORMAT),
        ({"name": "a", "scopes": [5]}, SCOPE_FORMAT),
        ({"name": "a", "scopes": [None]}, SCOPE_FORMAT),
        ({"name": "a", "scopes": ["ok", ["nested"]]}, SCOPE_FORMAT),
        ({"name": "a", "scopes": [f"s{index}" for index in range(101)]}, TOO_MANY_SCOPES),
    ],
)
def test_create_agent_validation(client: httpx.Client, body: Any, message: str) -> None:
    developer = new_developer(client)
    response = client.post("/v1/agents", json=body, headers=developer.headers)
    assert_error(response, 400, "BAD_REQUEST", message)


def test_create_agent_without_body(client: httpx.Client) -> None:
    developer = new_developer(client)
    assert_error(client.post("/v1/agents", headers=developer.headers), 400, "BAD_REQUEST", "name is required")


def test_create_agent_redirect_uris(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer, redirectUris=["https://app.example.com/callback"])
    assert agent["redirectUris"] == ["https://app.example.com/callback"]

    response = client.post(
        "/v1/agents", json={"name": "a", "redirectUris": ["/relative"]}, headers=developer.headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "BAD_REQUEST"
    assert "URL must be absolute and valid" in response.json()["message"]


def test_list_agents_newest_first(client: httpx.Client) -> None:
    developer = new_developer(client)
    other = new_developer(client)
    first = create_agent(client, developer, name="first")
    second = create_agent(client, developer, name="second")
    create_agent(client, other, name="foreign")

    response = client.get("/v1/agents", headers=developer.headers)
    assert response.status_code == 200, response.text
    agents = response.json()["agents"]
    assert [agent["agentId"] for agent in agents] == [second["agentId"], first["agentId"]]
    assert agents[1] == first


def test_list_agents_empty(client: httpx.Client) -> None:
    developer = new_developer(client)
    response = client.get("/v1/agents", headers=developer.headers)
    assert response.status_code == 200
    assert response.json() == {"agents": []}


def test_get_agent(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    response = client.get(f"/v1/agents/{agent['agentId']}", headers=developer.headers)
    assert response.status_code == 200, response.text
    assert response.json() == agent


def test_get_agent_not_found(client: httpx.Client) -> None:
    developer = new_developer(client)
    other = new_developer(client)
    foreign = create_agent(client, other)
    for agent_id in ("ag_01J00000000000000000000000", foreign["agentId"]):
        response = client.get(f"/v1/agents/{agent_id}", headers=developer.headers)
        assert_error(response, 404, "NOT_FOUND", "Agent not found")


@pytest.mark.parametrize("method", ["PATCH", "POST"])
def test_update_agent_partial(client: httpx.Client, daemon: Daemon, method: str) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer, name="before", description="keep me", scopes=["a"])
    query(
        database_url(daemon),
        "UPDATE agents SET updated_at = now() - interval '1 hour' WHERE id = $1",
        agent["agentId"],
    )
    stale = client.get(f"/v1/agents/{agent['agentId']}", headers=developer.headers).json()

    response = client.request(
        method, f"/v1/agents/{agent['agentId']}", json={"name": "  after  ", "scopes": []}, headers=developer.headers
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "after"
    assert updated["scopes"] == []
    assert updated["description"] == "keep me"
    assert updated["status"] == "active"
    assert updated["createdAt"] == agent["createdAt"]
    assert ISO_TIMESTAMP.match(updated["updatedAt"])
    assert updated["updatedAt"] > stale["updatedAt"]


def test_update_agent_status(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    path = f"/v1/agents/{agent['agentId']}"

    suspended = client.patch(path, json={"status": "suspended"}, headers=developer.headers)
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["status"] == "suspended"
    assert suspended.json()["name"] == agent["name"]

    active = client.patch(path, json={"status": "active", "description": ""}, headers=developer.headers)
    assert active.json()["status"] == "active"
    assert active.json()["description"] == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "No fields to update"),
        ({"unknown": 1}, "No fields to update"),
        ([], "No fields to update"),
        ("name", "No fields to update"),
        ({"name": None}, "No fields to update"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": "  "}, "name must be a non-empty string"),
        ({"name": 5}, "name must be a non-empty string"),
        ({"description": 5}, "description must be a string"),
        ({"status": "deleted"}, "status must be active or suspended"),
        ({"status": 1}, "status must be active or suspended"),
        ({"scopes": "a"}, SCOPE_FORMAT),
        ({"scopes": [""]}, SCOPE_FORMAT),
        ({"scopes": [f"s{index}" for index in range(101)]}, TOO_MANY_SCOPES),
    ],
)
@pytest.mark.parametrize("method", ["PATCH", "POST"])
def test_update_agent_validation(client: httpx.Client, method: str, body: Any, message: str) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    response = client.request(method, f"/v1/agents/{agent['agentId']}", json=body, headers=developer.headers)
    assert_error(response, 400, "BAD_REQUEST", message)


def test_update_agent_without_body(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    response = client.patch(f"/v1/agents/{agent['agentId']}", headers=developer.headers)
    assert_error(response, 400, "BAD_REQUEST", "No fields to update")


def test_update_agent_not_found(client: httpx.Client) -> None:
    developer = new_developer(client)
    foreign = create_agent(client, new_developer(client), name="foreign")
    for agent_id in ("ag_01J00000000000000000000000", foreign["agentId"]):
        response = client.patch(f"/v1/agents/{agent_id}", json={"name": "stolen"}, headers=developer.headers)
        assert_error(response, 404, "NOT_FOUND", "Agent not found")


def test_update_foreign_agent_unchanged(client: httpx.Client) -> None:
    owner = new_developer(client)
    intruder = new_developer(client)
    agent = create_agent(client, owner, name="mine")
    client.patch(f"/v1/agents/{agent['agentId']}", json={"name": "stolen"}, headers=intruder.headers)
    assert client.get(f"/v1/agents/{agent['agentId']}", headers=owner.headers).json()["name"] == "mine"


def test_delete_agent(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    grant = issue_grant(client, developer, agent["agentId"])

    response = client.delete(f"/v1/agents/{agent['agentId']}", headers=developer.headers)
    assert response.status_code == 204, response.text
    assert response.content == b""

    assert_error(
        client.get(f"/v1/agents/{agent['agentId']}", headers=developer.headers), 404, "NOT_FOUND", "Agent not found"
    )
    assert_error(
        client.get(f"/v1/grants/{grant['grantId']}", headers=developer.headers), 404, "NOT_FOUND", "Grant not found"
    )
    verified = client.post("/v1/tokens/verify", json={"token": grant["grantToken"]}, headers=developer.headers)
    assert verified.json() == {"valid": False}


def test_delete_agent_not_found(client: httpx.Client) -> None:
    developer = new_developer(client)
    owner = new_developer(client)
    foreign = create_agent(client, owner)
    deleted = create_agent(client, developer)
    assert client.delete(f"/v1/agents/{deleted['agentId']}", headers=developer.headers).status_code == 204

    for agent_id in (deleted["agentId"], foreign["agentId"], "ag_01J00000000000000000000000"):
        response = client.delete(f"/v1/agents/{agent_id}", headers=developer.headers)
        assert_error(response, 404, "NOT_FOUND", "Agent not found")
    assert client.get(f"/v1/agents/{foreign['agentId']}", headers=owner.headers).status_code == 200


def test_agents_need_key(client: httpx.Client) -> None:
    for method, path in (("GET", "/v1/agents"), ("POST", "/v1/agents"), ("GET", "/v1/agents/ag_x")):
        response = client.request(method, path)
        assert_error(response, 401, "UNAUTHORIZED", "Missing or invalid Authorization header")
