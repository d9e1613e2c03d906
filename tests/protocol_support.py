"""Shared checks and flows for the protocol tests: the error envelope, formats, and a grant."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support import Daemon, bearer, query, signup

ULID = r"[0-9A-HJKMNP-TV-Z]{26}"
ISO_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID_V4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# RFC 7636 appendix B.
PKCE_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
PKCE_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def assert_error(response: httpx.Response, status: int, code: str, message: str) -> None:
    """Check one error response: status, the exact envelope, and the request id header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body.get("code") == code, body
    assert body.get("message") == message, body
    assert set(body) == {"message", "code", "requestId"}, body
    assert body["requestId"] == response.headers.get("x-request-id")


def assert_envelope(response: httpx.Response) -> None:
    """Check that a response is a 4xx carrying the envelope, whatever its message."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"message", "code", "requestId"}, body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["code"], str) and body["code"], body
    assert body["requestId"] == response.headers.get("x-request-id")


def database_url(daemon: Daemon) -> str:
    return daemon.environ["DATABASE_URL"]


def jwt_part(token: str, index: int) -> dict[str, Any]:
    """Decode the header (0) or payload (1) of a JWT without verifying it."""
    segment = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


@dataclass
class Developer:
    """A developer signed up for one test, with an authenticated client view."""

    id: str
    api_key: str
    mode: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.api_key)


def new_developer(client: httpx.Client, mode: str = "sandbox") -> Developer:
    body = signup(client, mode=mode)
    return Developer(id=body["developerId"], api_key=body["apiKey"], mode=body["mode"])


def create_agent(client: httpx.Client, developer: Developer, **fields: Any) -> dict[str, Any]:
    payload = {"name": "test-agent", "description": "Runs tests", "scopes": ["calendar:read"], **fields}
    response = client.post("/v1/agents", json=payload, headers=developer.headers)
    assert response.status_code == 201, response.text
    agent: dict[str, Any] = response.json()
    return agent


def authorize(
    client: httpx.Client, developer: Developer, agent_id: str, **fields: Any
) -> dict[str, Any]:
    payload = {"agentId": agent_id, "principalId": "user-1", "scopes": ["calendar:read"], **fields}
    response = client.post("/v1/authorize", json=payload, headers=developer.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def exchange(client: httpx.Client, developer: Developer, code: str, agent_id: str, **fields: Any) -> httpx.Response:
    return client.post("/v1/token", json={"code": code, "agentId": agent_id, **fields}, headers=developer.headers)


def issue_grant(client: httpx.Client, developer: Developer, agent_id: str, **fields: Any) -> dict[str, Any]:
    """Authorize as a sandbox developer, exchange the code and return the token response."""
    request = authorize(client, developer, agent_id, **fields)
    response = exchange(client, developer, request["code"], agent_id)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def expire_auth_request(daemon: Daemon, request_id: str) -> None:
    """Move an auth request's expiry into the past, as if its lifetime had run out."""
    query(
        database_url(daemon),
        "UPDATE auth_requests SET expires_at = now() - interval '1 minute' WHERE id = $1",
        request_id,
    )


def make_pending(daemon: Daemon, request_id: str) -> None:
    """Turn an auto-approved sandbox request back into a pending one without a code."""
    query(
        database_url(daemon),
        "UPDATE auth_requests SET status = 'pending', code = NULL WHERE id = $1",
        request_id,
    )
