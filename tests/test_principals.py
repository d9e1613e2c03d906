"""Principal sessions and the end user's own routes: ``/v1/principal-sessions`` and ``/v1/principal/*``."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from grantex import CreatePrincipalSessionParams

from tests.grant_flow import (
    Account,
    delegate,
    grant_status,
    issue_grant,
    open_account,
    register_agent,
    token_is_valid,
    unverified_claims,
)
from tests.support import Daemon

MISSING_SESSION = {"message": "Missing session token", "code": "UNAUTHORIZED"}
INVALID_SESSION = {"message": "Invalid or expired session token", "code": "UNAUTHORIZED"}


def create_session(client: httpx.Client, account: Account, body: object) -> httpx.Response:
    return client.post("/v1/principal-sessions", headers=account.headers, json=body)


def session_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["message"] == message


@pytest.fixture
def account(daemon: Daemon, client: httpx.Client) -> Account:
    return open_account(daemon, client)


@pytest.fixture
def agent(client: httpx.Client, account: Account) -> dict[str, Any]:
    return register_agent(client, account, name="calendar-agent")


@pytest.fixture
def grant(client: httpx.Client, account: Account, agent: dict[str, Any]) -> dict[str, Any]:
    return issue_grant(client, account, agent["agentId"], principal_id="alice")


@pytest.fixture
def session_token(client: httpx.Client, account: Account, grant: dict[str, Any]) -> str:
    response = create_session(client, account, {"principalId": "alice"})
    assert response.status_code == 201, response.text
    token: str = response.json()["sessionToken"]
    return token


def test_session_with_sdk(daemon: Daemon, account: Account, grant: dict[str, Any]) -> None:
    session = account.sdk.principal_sessions.create(CreatePrincipalSessionParams(principal_id="alice"))

    assert "/permissions#session=" in session.dashboard_url
    assert session.dashboard_url.endswith(quote(session.session_token, safe=""))
    assert session.expires_at.endswith("Z")
    claims = unverified_claims(session.session_token)
    assert claims["sub"] == "alice"
    assert claims["dev"] == account.developer_id
    assert claims["purpose"] == "principal_dashboard"
    assert claims["iss"] == daemon.environ["JWT_ISSUER"]
    assert claims["exp"] - claims["iat"] == 3600
    assert "jti" not in claims
    assert "agt" not in claims


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [("30m", 1800), ("24h", 86400), ("48h", 86400), ("400000d", 86400), ("9007199254740991s", 86400)],
)
def test_session_lifetime(
    client: httpx.Client, account: Account, grant: dict[str, Any], expires_in: str, seconds: int
) -> None:
    response = create_session(client, account, {"principalId": "alice", "expiresIn": expires_in})

    assert response.status_code == 201, response.text
    claims = unverified_claims(response.json()["sessionToken"])
    assert claims["exp"] - claims["iat"] == seconds


@pytest.mark.parametrize("body", [{}, {"principalId": ""}, {"principalId": 5}, [], None])
def test_session_missing_principal(client: httpx.Client, account: Account, body: object) -> None:
    response = create_session(client, account, body)
    assert_error(response, 400, "BAD_REQUEST", "principalId is required")


@pytest.mark.parametrize(
    "expires_in", ["1w", "0h", "000d", "1.5h", "1h\n", "", "9007199254740992s", "1" * 5000 + "d", 3600]
)
def test_session_bad_expires_in(
    client: httpx.Client, account: Account, grant: dict[str, Any], expires_in: object
) -> None:
    response = create_session(client, account, {"principalId": "alice", "expiresIn": expires_in})
    assert_error(response, 400, "BAD_REQUEST", 'Invalid expiresIn format. Use e.g. "1h", "30m", "24h".')


def test_session_no_grants(client: httpx.Client, account: Account, grant: dict[str, Any]) -> None:
    response = create_session(client, account, {"principalId": "bob"})
    assert_error(response, 404, "NOT_FOUND", "No active grants found for this principal")


def test_session_only_revoked_grants(client: httpx.Client, account: Account, grant: dict[str, Any]) -> None:
    revoked = client.delete(f"/v1/grants/{grant['grantId']}", headers=account.headers)
    assert revoked.status_code == 204, revoked.text

    response = create_session(client, account, {"principalId": "alice"})

    assert_error(response, 404, "NOT_FOUND", "No active grants found for this principal")


def test_session_other_developers_principal(daemon: Daemon, client: httpx.Client, grant: dict[str, Any]) -> None:
    other = open_account(daemon, client, name="Other developer")

    response = create_session(client, other, {"principalId": "alice"})

    assert_error(response, 404, "NOT_FOUND", "No active grants found for this principal")


def test_session_expired_grants(client: httpx.Client, account: Account, agent: dict[str, Any]) -> None:
    live = issue_grant(client, account, agent["agentId"], principal_id="carol")
    expired = issue_grant(client, account, agent["agentId"], principal_id="carol", expiresIn="1s")
    daves = issue_grant(client, account, agent["agentId"], principal_id="dave", expiresIn="1s")
    expires_at = max(
        datetime.fromisoformat(grant["expiresAt"].replace("Z", "+00:00")).timestamp() for grant in (expired, daves)
    )
    time.sleep(max(0.0, expires_at - time.time()) + 0.1)

    only_expired = create_session(client, account, {"principalId": "dave"})
    session = create_session(client, account, {"principalId": "carol"})

    assert_error(only_expired, 404, "NOT_FOUND", "No active grants found for this principal")
    assert session.status_code == 201, session.text
    # The dashboard lists every grant still marked active, expired ones included.
    listed = client.get("/v1/principal/grants", headers=session_headers(session.json()["sessionToken"]))
    assert listed.status_code == 200, listed.text
    assert [item["grantId"] for item in listed.json()["grants"]] == [expired["grantId"], live["grantId"]]


def test_principal_grants_lists_own_active(
    daemon: Daemon, client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    second = issue_grant(client, account, agent["agentId"], principal_id="alice", scopes=["calendar:read"])
    revoked = issue_grant(client, account, agent["agentId"], principal_id="alice")
    assert client.delete(f"/v1/grants/{revoked['grantId']}", headers=account.headers).status_code == 204
    issue_grant(client, account, agent["agentId"], principal_id="bob")
    other = open_account(daemon, client, name="Other developer")
    issue_grant(client, other, register_agent(client, other)["agentId"], principal_id="alice")
    token = create_session(client, account, {"principalId": "alice"}).json()["sessionToken"]

    response = client.get("/v1/principal/grants", headers=session_headers(token))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["principalId"] == "alice"
    assert [item["grantId"] for item in body["grants"]] == [second["grantId"], grant["grantId"]]
    listed = body["grants"][0]
    assert listed["agentId"] == agent["agentId"]
    assert listed["agentName"] == "calendar-agent"
    assert listed["agentDid"] == agent["did"]
    assert listed["scopes"] == ["calendar:read"]
    assert listed["status"] == "active"
    assert listed["expiresAt"] == second["expiresAt"]
    assert listed["delegationDepth"] == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "bearer x"}, {"Authorization": "Basic x"}, {"Authorization": "Bearerx"}],
)
def test_principal_grants_missing_session(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.get("/v1/principal/grants", headers=headers)

    assert response.status_code == 401, response.text
    assert response.json() == MISSING_SESSION


def test_principal_grants_lowercase_bearer(client: httpx.Client, session_token: str) -> None:
    response = client.get("/v1/principal/grants", headers={"Authorization": f"bearer {session_token}"})

    assert response.status_code == 401, response.text
    assert response.json() == MISSING_SESSION


def test_principal_grants_garbage_session(client: httpx.Client) -> None:
    response = client.get("/v1/principal/grants", headers=session_headers("garbage"))

    assert response.status_code == 401, response.text
    assert response.json() == INVALID_SESSION


def test_principal_grants_grant_token_as_session(client: httpx.Client, grant: dict[str, Any]) -> None:
    response = client.get("/v1/principal/grants", headers=session_headers(grant["grantToken"]))

    assert response.status_code == 401, response.text
    assert response.json() == INVALID_SESSION


def test_principal_grants_api_key_as_session(client: httpx.Client, account: Account) -> None:
    response = client.get("/v1/principal/grants", headers=account.headers)

    assert response.status_code == 401, response.text
    assert response.json() == INVALID_SESSION


def test_principal_grants_tampered_session(client: httpx.Client, session_token: str) -> None:
    header, payload, signature = session_token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"

    response = client.get("/v1/principal/grants", headers=session_headers(tampered))

    assert response.status_code == 401, response.text
    assert response.json() == INVALID_SESSION


def test_session_token_as_api_key(client: httpx.Client, session_token: str) -> None:
    response = client.get("/v1/agents", headers=session_headers(session_token))

    assert response.status_code == 401, response.text
    assert response.json()["code"] == "UNAUTHORIZED"


def test_principal_revoke_cascades(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any], session_token: str
) -> None:
    sub_agent = register_agent(client, account, name="sub-agent")
    child = delegate(client, account, grant["grantToken"], sub_agent["agentId"])
    assert child.status_code == 201, child.text

    response = client.delete(f"/v1/principal/grants/{grant['grantId']}", headers=session_headers(session_token))

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert grant_status(client, account, grant["grantId"]) == "revoked"
    assert grant_status(client, account, child.json()["grantId"]) == "revoked"
    assert not token_is_valid(client, account, grant["grantToken"])
    assert not token_is_valid(client, account, child.json()["grantToken"])
    listed = client.get("/v1/principal/grants", headers=session_headers(session_token))
    assert listed.json()["grants"] == []


def test_principal_revoke_twice(client: httpx.Client, grant: dict[str, Any], session_token: str) -> None:
    first = client.delete(f"/v1/principal/grants/{grant['grantId']}", headers=session_headers(session_token))
    assert first.status_code == 204, first.text

    second = client.delete(f"/v1/principal/grants/{grant['grantId']}", headers=session_headers(session_token))

    assert_error(second, 404, "NOT_FOUND", "Grant not found")


def test_principal_revoke_unknown_grant(client: httpx.Client, session_token: str) -> None:
    response = client.delete("/v1/principal/grants/grnt_unknown", headers=session_headers(session_token))
    assert_error(response, 404, "NOT_FOUND", "Grant not found")


def test_principal_revoke_other_principals_grant(
    client: httpx.Client, account: Account, agent: dict[str, Any], session_token: str
) -> None:
    bobs = issue_grant(client, account, agent["agentId"], principal_id="bob")

    response = client.delete(f"/v1/principal/grants/{bobs['grantId']}", headers=session_headers(session_token))

    assert_error(response, 404, "NOT_FOUND", "Grant not found")
    assert grant_status(client, account, bobs["grantId"]) == "active"


def test_principal_revoke_other_developers_grant(
    daemon: Daemon, client: httpx.Client, session_token: str
) -> None:
    other = open_account(daemon, client, name="Other developer")
    others = issue_grant(client, other, register_agent(client, other)["agentId"], principal_id="alice")

    response = client.delete(f"/v1/principal/grants/{others['grantId']}", headers=session_headers(session_token))

    assert_error(response, 404, "NOT_FOUND", "Grant not found")
    assert grant_status(client, other, others["grantId"]) == "active"


def test_principal_revoke_missing_session(client: httpx.Client, grant: dict[str, Any]) -> None:
    response = client.delete(f"/v1/principal/grants/{grant['grantId']}")

    assert response.status_code == 401, response.text
    assert response.json() == MISSING_SESSION


def log_audit(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant_id: str, principal_id: str, action: str
) -> dict[str, Any]:
    response = client.post(
        "/v1/audit/log",
        headers=account.headers,
        json={
            "agentId": agent["agentId"],
            "agentDid": agent["did"],
            "grantId": grant_id,
            "principalId": principal_id,
            "action": action,
            "metadata": {"step": action},
        },
    )
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry


def test_principal_audit_newest_first(
    daemon: Daemon,
    client: httpx.Client,
    account: Account,
    agent: dict[str, Any],
    grant: dict[str, Any],
    session_token: str,
) -> None:
    first = log_audit(client, account, agent, grant["grantId"], "alice", "calendar.read")
    log_audit(client, account, agent, grant["grantId"], "bob", "calendar.read")
    second = log_audit(client, account, agent, grant["grantId"], "alice", "calendar.write")
    other = open_account(daemon, client, name="Other developer")
    log_audit(client, other, agent, grant["grantId"], "alice", "calendar.delete")

    response = client.get("/v1/principal/audit", headers=session_headers(session_token))

    assert response.status_code == 200, response.text
    entries = response.json()["entries"]
    assert [entry["entryId"] for entry in entries] == [second["entryId"], first["entryId"]]
    assert entries[0] == {
        "entryId": second["entryId"],
        "agentId": agent["agentId"],
        "agentDid": agent["did"],
        "grantId": grant["grantId"],
        "principalId": "alice",
        "action": "calendar.write",
        "metadata": {"step": "calendar.write"},
        "status": "success",
        "timestamp": second["timestamp"],
    }


def test_principal_audit_missing_session(client: httpx.Client) -> None:
    response = client.get("/v1/principal/audit", headers={"Authorization": "bearer x"})

    assert response.status_code == 401, response.text
    assert response.json() == MISSING_SESSION
