"""Developers, agents and grants created over HTTP, for tests of what happens after issuance.

Every developer here signs up in sandbox mode, so ``POST /v1/authorize`` returns an approved
code at once and a grant needs two requests instead of a consent round trip.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from grantex import Grantex

from tests.support import Daemon, bearer, signup


@dataclass(frozen=True)
class Account:
    """A signed-up developer with its API key headers and an SDK client bound to the daemon."""

    developer_id: str
    api_key: str
    headers: dict[str, str]
    sdk: Grantex


def open_account(daemon: Daemon, client: httpx.Client, name: str = "Test developer") -> Account:
    developer = signup(client, mode="sandbox", name=name)
    return Account(
        developer_id=developer["developerId"],
        api_key=developer["apiKey"],
        headers=bearer(developer["apiKey"]),
        sdk=Grantex(api_key=developer["apiKey"], base_url=daemon.base_url),
    )


def register_agent(client: httpx.Client, account: Account, name: str = "agent") -> dict[str, Any]:
    response = client.post(
        "/v1/agents", headers=account.headers, json={"name": name, "description": "", "scopes": []}
    )
    assert response.status_code == 201, response.text
    agent: dict[str, Any] = response.json()
    return agent


def suspend_agent(client: httpx.Client, account: Account, agent_id: str) -> None:
    response = client.patch(f"/v1/agents/{agent_id}", headers=account.headers, json={"status": "suspended"})
    assert response.status_code == 200, response.text


def issue_grant(
    client: httpx.Client,
    account: Account,
    agent_id: str,
    principal_id: str = "user-1",
    scopes: Sequence[str] = ("files:read", "files:write"),
    **authorize_fields: str,
) -> dict[str, Any]:
    """Authorize and exchange the code, and return the ``POST /v1/token`` response body."""
    authorized = client.post(
        "/v1/authorize",
        headers=account.headers,
        json={"agentId": agent_id, "principalId": principal_id, "scopes": list(scopes), **authorize_fields},
    )
    assert authorized.status_code == 201, authorized.text
    exchanged = client.post(
        "/v1/token", headers=account.headers, json={"code": authorized.json()["code"], "agentId": agent_id}
    )
    assert exchanged.status_code == 201, exchanged.text
    grant: dict[str, Any] = exchanged.json()
    return grant


def delegate(
    client: httpx.Client,
    account: Account,
    parent_token: str,
    sub_agent_id: str,
    scopes: Sequence[str] = ("files:read",),
    **fields: str,
) -> httpx.Response:
    return client.post(
        "/v1/grants/delegate",
        headers=account.headers,
        json={"parentGrantToken": parent_token, "subAgentId": sub_agent_id, "scopes": list(scopes), **fields},
    )


def unverified_claims(token: str) -> dict[str, Any]:
    """Decode a JWT payload without checking its signature, because the tests verify tokens online."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def token_is_valid(client: httpx.Client, account: Account, token: str) -> bool:
    response = client.post("/v1/tokens/verify", headers=account.headers, json={"token": token})
    assert response.status_code == 200, response.text
    valid: bool = response.json()["valid"]
    return valid


def grant_status(client: httpx.Client, account: Account, grant_id: str) -> str:
    response = client.get(f"/v1/grants/{grant_id}", headers=account.headers)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status
