"""``POST /v1/grants/delegate``, cascade revocation of delegation chains, and ``POST /v1/grants/verify``."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
from grantex import GrantexAuthError, GrantexTokenError

from tests.grant_flow import (
    Account,
    delegate,
    grant_status,
    issue_grant,
    open_account,
    register_agent,
    suspend_agent,
    token_is_valid,
    unverified_claims,
)
from tests.support import Backends, Daemon, new_daemon, stop_quietly

REQUIRED_MESSAGE = "parentGrantToken, subAgentId, and scopes are required"
SCOPES_MESSAGE = "scopes must contain 1 to 100 non-empty strings of at most 256 characters"
EXPIRES_IN_MESSAGE = 'Invalid expiresIn format. Use e.g. "1h", "30m", or "1d".'


def assert_error(response: httpx.Response, status: int, code: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["message"] == message


def verify_grant(client: httpx.Client, account: Account, token: str) -> httpx.Response:
    return client.post("/v1/grants/verify", headers=account.headers, json={"token": token})


@pytest.fixture
def account(daemon: Daemon, client: httpx.Client) -> Account:
    return open_account(daemon, client)


@pytest.fixture
def agent(client: httpx.Client, account: Account) -> dict[str, Any]:
    return register_agent(client, account, name="parent-agent")


@pytest.fixture
def sub_agent(client: httpx.Client, account: Account) -> dict[str, Any]:
    return register_agent(client, account, name="sub-agent")


@pytest.fixture
def parent(client: httpx.Client, account: Account, agent: dict[str, Any]) -> dict[str, Any]:
    return issue_grant(client, account, agent["agentId"], principal_id="alice", scopes=["files:read", "files:write"])


def test_delegate_with_sdk(
    client: httpx.Client, account: Account, agent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    parent = issue_grant(client, account, agent["agentId"], principal_id="alice", audience="https://api.example.com")

    child = account.sdk.grants.delegate(
        parent_grant_token=parent["grantToken"], sub_agent_id=sub_agent["agentId"], scopes=["files:read"]
    )

    assert child["grantId"].startswith("grnt_")
    assert child["grantId"] != parent["grantId"]
    assert child["refreshToken"].startswith("ref_")
    assert child["scopes"] == ["files:read"]
    claims = unverified_claims(child["grantToken"])
    assert claims["sub"] == "alice"
    assert claims["agt"] == sub_agent["did"]
    assert claims["dev"] == account.developer_id
    assert claims["scp"] == ["files:read"]
    assert claims["grnt"] == child["grantId"]
    assert claims["parentAgt"] == agent["did"]
    assert claims["parentGrnt"] == parent["grantId"]
    assert claims["delegationDepth"] == 1
    assert "aud" not in claims
    assert claims["exp"] - claims["iat"] == 3600
    assert token_is_valid(client, account, child["grantToken"])


def test_delegate_expiry_capped_by_parent(
    client: httpx.Client, account: Account, agent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    parent = issue_grant(client, account, agent["agentId"], expiresIn="10m")

    response = delegate(client, account, parent["grantToken"], sub_agent["agentId"], expiresIn="2h")

    assert response.status_code == 201, response.text
    assert unverified_claims(response.json()["grantToken"])["exp"] == unverified_claims(parent["grantToken"])["exp"]
    assert response.json()["expiresAt"] == parent["expiresAt"]


def test_delegate_expires_in(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    response = delegate(client, account, parent["grantToken"], sub_agent["agentId"], expiresIn="30m")

    assert response.status_code == 201, response.text
    claims = unverified_claims(response.json()["grantToken"])
    assert claims["exp"] - claims["iat"] == 1800


def test_delegate_child_grant_record(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    child = delegate(client, account, parent["grantToken"], sub_agent["agentId"])
    assert child.status_code == 201, child.text

    response = client.get(f"/v1/grants/{child.json()['grantId']}", headers=account.headers)

    assert response.status_code == 200, response.text
    assert response.json()["delegationDepth"] == 1
    assert response.json()["parentGrantId"] == parent["grantId"]
    assert response.json()["agentId"] == sub_agent["agentId"]
    assert response.json()["principalId"] == "alice"
    assert response.json()["status"] == "active"


def test_delegate_to_self(
    client: httpx.Client, account: Account, agent: dict[str, Any], parent: dict[str, Any]
) -> None:
    response = delegate(client, account, parent["grantToken"], agent["agentId"])

    assert response.status_code == 201, response.text
    assert unverified_claims(response.json()["grantToken"])["agt"] == agent["did"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        {"subAgentId": "ag_x", "scopes": ["files:read"]},
        {"parentGrantToken": "x", "scopes": ["files:read"]},
        {"parentGrantToken": "x", "subAgentId": "ag_x"},
        {"parentGrantToken": "", "subAgentId": "ag_x", "scopes": ["files:read"]},
        {"parentGrantToken": "x", "subAgentId": "", "scopes": ["files:read"]},
        {"parentGrantToken": "x", "subAgentId": "ag_x", "scopes": None},
    ],
)
def test_delegate_missing_fields(client: httpx.Client, account: Account, body: object) -> None:
    response = client.post("/v1/grants/delegate", headers=account.headers, json=body)
    assert_error(response, 400, "BAD_REQUEST", REQUIRED_MESSAGE)


@pytest.mark.parametrize(
    "scopes",
    [[], "files:read", ["files:read", 1], [""], ["   "], ["s" * 257], [f"scope:{index}" for index in range(101)]],
)
def test_delegate_bad_scopes(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any], scopes: object
) -> None:
    response = client.post(
        "/v1/grants/delegate",
        headers=account.headers,
        json={"parentGrantToken": parent["grantToken"], "subAgentId": sub_agent["agentId"], "scopes": scopes},
    )
    assert_error(response, 400, "BAD_REQUEST", SCOPES_MESSAGE)


@pytest.mark.parametrize("credential_format", ["sd-jwt", "agent-passport", "JWT", ""])
def test_delegate_bad_credential_format(
    client: httpx.Client,
    account: Account,
    parent: dict[str, Any],
    sub_agent: dict[str, Any],
    credential_format: str,
) -> None:
    response = delegate(client, account, parent["grantToken"], sub_agent["agentId"], credentialFormat=credential_format)
    assert_error(response, 400, "BAD_REQUEST", "credentialFormat must be jwt, vc-jwt, or both")


def test_delegate_garbage_parent(client: httpx.Client, account: Account, sub_agent: dict[str, Any]) -> None:
    response = delegate(client, account, "not.a.jwt", sub_agent["agentId"])
    assert_error(response, 400, "BAD_REQUEST", "Invalid parentGrantToken")


def test_delegate_tampered_parent(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    header, payload, signature = parent["grantToken"].split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"

    response = delegate(client, account, tampered, sub_agent["agentId"])

    assert_error(response, 400, "BAD_REQUEST", "Invalid parentGrantToken")


def test_delegate_expired_parent(
    client: httpx.Client, account: Account, agent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    parent = issue_grant(client, account, agent["agentId"], expiresIn="1s")
    expires_at = datetime.fromisoformat(parent["expiresAt"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, expires_at - time.time()) + 0.1)

    response = delegate(client, account, parent["grantToken"], sub_agent["agentId"])

    assert_error(response, 400, "BAD_REQUEST", "Invalid parentGrantToken")


def test_delegate_other_developers_parent(
    daemon: Daemon, client: httpx.Client, parent: dict[str, Any]
) -> None:
    other = open_account(daemon, client, name="Other developer")
    other_agent = register_agent(client, other)

    response = delegate(client, other, parent["grantToken"], other_agent["agentId"])

    assert_error(response, 403, "FORBIDDEN", "Parent grant belongs to a different developer")


def test_delegate_other_developers_parent_with_sdk(
    daemon: Daemon, client: httpx.Client, parent: dict[str, Any]
) -> None:
    other = open_account(daemon, client, name="Other developer")
    other_agent = register_agent(client, other)

    with pytest.raises(GrantexAuthError, match="Parent grant belongs to a different developer"):
        other.sdk.grants.delegate(
            parent_grant_token=parent["grantToken"], sub_agent_id=other_agent["agentId"], scopes=["files:read"]
        )


def test_delegate_revoked_parent(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    revoked = client.delete(f"/v1/grants/{parent['grantId']}", headers=account.headers)
    assert revoked.status_code == 204, revoked.text

    response = delegate(client, account, parent["grantToken"], sub_agent["agentId"])

    assert_error(response, 400, "BAD_REQUEST", "Parent grant has been revoked")


def test_delegate_parent_token_revoked(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    jti = unverified_claims(parent["grantToken"])["jti"]
    revoked = client.post("/v1/tokens/revoke", headers=account.headers, json={"jti": jti})
    assert revoked.status_code == 204, revoked.text

    response = delegate(client, account, parent["grantToken"], sub_agent["agentId"])

    assert_error(response, 400, "BAD_REQUEST", "Parent grant has been revoked")


def test_delegate_depth_limit_default(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    token = parent["grantToken"]
    for depth in (1, 2, 3):
        response = delegate(client, account, token, sub_agent["agentId"])
        assert response.status_code == 201, f"depth {depth}: {response.text}"
        assert unverified_claims(response.json()["grantToken"])["delegationDepth"] == depth
        token = response.json()["grantToken"]

    response = delegate(client, account, token, sub_agent["agentId"])

    assert_error(
        response,
        403,
        "DELEGATION_DEPTH_EXCEEDED",
        "Delegation depth limit reached: chains may not exceed 3 hop(s)",
    )


@pytest.fixture
def shallow_daemon(backends: Backends, database_url: str) -> Iterator[Daemon]:
    process = new_daemon(backends, database_url, MAX_DELEGATION_DEPTH="1")
    process.start()
    yield process
    stop_quietly(process)


def test_delegate_depth_limit_configured(shallow_daemon: Daemon) -> None:
    with httpx.Client(base_url=shallow_daemon.base_url, timeout=30) as http:
        account = open_account(shallow_daemon, http)
        agent = register_agent(http, account)
        parent = issue_grant(http, account, agent["agentId"])
        child = delegate(http, account, parent["grantToken"], agent["agentId"])
        assert child.status_code == 201, child.text

        response = delegate(http, account, child.json()["grantToken"], agent["agentId"])

        assert_error(
            response,
            403,
            "DELEGATION_DEPTH_EXCEEDED",
            "Delegation depth limit reached: chains may not exceed 1 hop(s)",
        )


def test_delegate_scope_superset(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    response = delegate(
        client, account, parent["grantToken"], sub_agent["agentId"], scopes=["files:read", "mail:send", "files:admin"]
    )
    assert_error(response, 400, "BAD_REQUEST", "Requested scopes exceed parent grant scopes: mail:send, files:admin")


def test_delegate_scope_superset_before_sub_agent(
    client: httpx.Client, account: Account, parent: dict[str, Any]
) -> None:
    response = delegate(client, account, parent["grantToken"], "ag_unknown", scopes=["mail:send"])
    assert_error(response, 400, "BAD_REQUEST", "Requested scopes exceed parent grant scopes: mail:send")


def test_delegate_unknown_sub_agent(client: httpx.Client, account: Account, parent: dict[str, Any]) -> None:
    response = delegate(client, account, parent["grantToken"], "ag_01J00000000000000000000000")
    assert_error(response, 404, "NOT_FOUND", "Sub-agent not found")


def test_delegate_suspended_sub_agent(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    suspend_agent(client, account, sub_agent["agentId"])

    response = delegate(client, account, parent["grantToken"], sub_agent["agentId"])

    assert_error(response, 404, "NOT_FOUND", "Sub-agent not found")


def test_delegate_other_developers_sub_agent(
    daemon: Daemon, client: httpx.Client, account: Account, parent: dict[str, Any]
) -> None:
    other = open_account(daemon, client, name="Other developer")
    other_agent = register_agent(client, other)

    response = delegate(client, account, parent["grantToken"], other_agent["agentId"])

    assert_error(response, 404, "NOT_FOUND", "Sub-agent not found")


@pytest.mark.parametrize("expires_in", ["1w", "0h", "1.5h", " 1h", "1H", "", "99999999999d", 60])
def test_delegate_bad_expires_in(
    client: httpx.Client,
    account: Account,
    parent: dict[str, Any],
    sub_agent: dict[str, Any],
    expires_in: object,
) -> None:
    response = client.post(
        "/v1/grants/delegate",
        headers=account.headers,
        json={
            "parentGrantToken": parent["grantToken"],
            "subAgentId": sub_agent["agentId"],
            "scopes": ["files:read"],
            "expiresIn": expires_in,
        },
    )
    assert_error(response, 400, "BAD_REQUEST", EXPIRES_IN_MESSAGE)


def test_revoke_root_cascades_to_chain(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    chain = []
    token = parent["grantToken"]
    for _ in range(3):
        response = delegate(client, account, token, sub_agent["agentId"])
        assert response.status_code == 201, response.text
        chain.append(response.json())
        token = response.json()["grantToken"]

    revoked = client.delete(f"/v1/grants/{parent['grantId']}", headers=account.headers)

    assert revoked.status_code == 204, revoked.text
    assert grant_status(client, account, parent["grantId"]) == "revoked"
    for depth, descendant in enumerate(chain, start=1):
        assert grant_status(client, account, descendant["grantId"]) == "revoked", f"depth {depth}"
        assert not token_is_valid(client, account, descendant["grantToken"]), f"depth {depth}"
        verified = verify_grant(client, account, descendant["grantToken"])
        assert verified.status_code == 200, verified.text
        assert verified.json() == {"active": False, "reason": "revoked"}, f"depth {depth}"


def test_revoke_middle_of_chain(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    child = delegate(client, account, parent["grantToken"], sub_agent["agentId"]).json()
    grandchild = delegate(client, account, child["grantToken"], sub_agent["agentId"]).json()

    revoked = client.delete(f"/v1/grants/{child['grantId']}", headers=account.headers)

    assert revoked.status_code == 204, revoked.text
    assert grant_status(client, account, parent["grantId"]) == "active"
    assert token_is_valid(client, account, parent["grantToken"])
    assert grant_status(client, account, grandchild["grantId"]) == "revoked"
    assert not token_is_valid(client, account, grandchild["grantToken"])


def test_delegate_racing_revocation(
    daemon: Daemon, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:

        def delegate_child(_: int) -> httpx.Response:
            return delegate(http, account, parent["grantToken"], sub_agent["agentId"])

        def revoke_parent() -> httpx.Response:
            return http.delete(f"/v1/grants/{parent['grantId']}", headers=account.headers)

        with ThreadPoolExecutor(max_workers=9) as pool:
            delegations = [pool.submit(delegate_child, index) for index in range(8)]
            revocation = pool.submit(revoke_parent)
            responses = [future.result() for future in delegations]

        assert revocation.result().status_code == 204, revocation.result().text
        # Whichever side won each race, no child may outlive the revoked parent.
        for response in responses:
            if response.status_code == 201:
                assert grant_status(http, account, response.json()["grantId"]) == "revoked"
            else:
                assert response.status_code == 400, response.text
                assert response.json()["message"] in (
                    "Parent grant has been revoked",
                    "Parent grant is no longer active",
                )


def test_verify_grant_with_sdk(client: httpx.Client, account: Account, parent: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        # The SDK warns about agt/dev/scp as legacy aliases, but they are the protocol's claims.
        warnings.simplefilter("ignore")
        verified = account.sdk.grants.verify(parent["grantToken"])

    assert verified.grant_id == parent["grantId"]
    assert verified.principal_id == "alice"
    assert verified.developer_id == account.developer_id
    assert list(verified.scopes) == ["files:read", "files:write"]


def test_verify_grant_claims(client: httpx.Client, account: Account, parent: dict[str, Any]) -> None:
    response = verify_grant(client, account, parent["grantToken"])

    assert response.status_code == 200, response.text
    assert response.json()["active"] is True
    claims = response.json()["claims"]
    expected = unverified_claims(parent["grantToken"])
    for name in ("jti", "sub", "agt", "dev", "scp", "iat", "exp", "grnt"):
        assert claims[name] == expected[name], name


def test_verify_grant_delegated_claims(
    client: httpx.Client, account: Account, parent: dict[str, Any], sub_agent: dict[str, Any]
) -> None:
    child = delegate(client, account, parent["grantToken"], sub_agent["agentId"]).json()

    response = verify_grant(client, account, child["grantToken"])

    assert response.status_code == 200, response.text
    claims = response.json()["claims"]
    assert claims["parentGrnt"] == parent["grantId"]
    assert claims["delegationDepth"] == 1


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 5}, [], None])
def test_verify_grant_missing_token(client: httpx.Client, account: Account, body: object) -> None:
    response = client.post("/v1/grants/verify", headers=account.headers, json=body)
    assert_error(response, 400, "BAD_REQUEST", "token is required")


def test_verify_grant_garbage(client: httpx.Client, account: Account) -> None:
    response = verify_grant(client, account, "garbage")
    assert_error(response, 400, "BAD_REQUEST", "Invalid token")


def test_verify_grant_other_developer(daemon: Daemon, client: httpx.Client, parent: dict[str, Any]) -> None:
    other = open_account(daemon, client, name="Other developer")

    response = verify_grant(client, other, parent["grantToken"])

    assert response.status_code == 200, response.text
    assert response.json() == {"active": False, "reason": "wrong_developer"}


def test_verify_grant_revoked(client: httpx.Client, account: Account, parent: dict[str, Any]) -> None:
    revoked = client.delete(f"/v1/grants/{parent['grantId']}", headers=account.headers)
    assert revoked.status_code == 204, revoked.text

    response = verify_grant(client, account, parent["grantToken"])

    assert response.status_code == 200, response.text
    assert response.json() == {"active": False, "reason": "revoked"}


def test_verify_grant_revoked_with_sdk(client: httpx.Client, account: Account, parent: dict[str, Any]) -> None:
    revoked = client.delete(f"/v1/grants/{parent['grantId']}", headers=account.headers)
    assert revoked.status_code == 204, revoked.text

    with pytest.raises(GrantexTokenError, match="revoked"):
        account.sdk.grants.verify(parent["grantToken"])
