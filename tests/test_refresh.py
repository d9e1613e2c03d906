"""``POST /v1/token/refresh``: single-use rotation, reuse detection and idempotent retries."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from grantex import GrantexApiError, RefreshTokenParams

from grantexd.crypto.hashing import sha256_hex
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
from tests.support import Daemon, query


def refresh(
    client: httpx.Client, account: Account, refresh_token: str, agent_id: str, idempotency_key: str | None = None
) -> httpx.Response:
    headers = dict(account.headers)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return client.post(
        "/v1/token/refresh", headers=headers, json={"refreshToken": refresh_token, "agentId": agent_id}
    )


def assert_bad_request(response: httpx.Response, message: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "BAD_REQUEST"
    assert response.json()["message"] == message


@pytest.fixture
def account(daemon: Daemon, client: httpx.Client) -> Account:
    return open_account(daemon, client)


@pytest.fixture
def agent(client: httpx.Client, account: Account) -> dict[str, Any]:
    return register_agent(client, account)


@pytest.fixture
def grant(client: httpx.Client, account: Account, agent: dict[str, Any]) -> dict[str, Any]:
    return issue_grant(client, account, agent["agentId"])


def test_refresh_with_sdk_rotates_tokens(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    refreshed = account.sdk.tokens.refresh(
        RefreshTokenParams(refresh_token=grant["refreshToken"], agent_id=agent["agentId"])
    )

    assert refreshed.grant_id == grant["grantId"]
    assert refreshed.refresh_token.startswith("ref_")
    assert refreshed.refresh_token != grant["refreshToken"]
    assert refreshed.grant_token != grant["grantToken"]
    assert list(refreshed.scopes) == grant["scopes"]
    assert refreshed.expires_at == grant["expiresAt"]
    original = unverified_claims(grant["grantToken"])
    rotated = unverified_claims(refreshed.grant_token)
    assert rotated["exp"] == original["exp"]
    assert rotated["jti"] != original["jti"]
    assert rotated["grnt"] == original["grnt"]
    assert rotated["sub"] == original["sub"]
    assert rotated["agt"] == original["agt"]
    assert token_is_valid(client, account, refreshed.grant_token)
    assert token_is_valid(client, account, grant["grantToken"])


def test_refresh_rotated_token_refreshes_again(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    first = refresh(client, account, grant["refreshToken"], agent["agentId"])
    assert first.status_code == 201, first.text

    second = refresh(client, account, first.json()["refreshToken"], agent["agentId"])

    assert second.status_code == 201, second.text
    assert second.json()["grantId"] == grant["grantId"]
    assert second.json()["expiresAt"] == grant["expiresAt"]


def test_refresh_keeps_audience(client: httpx.Client, account: Account, agent: dict[str, Any]) -> None:
    grant = issue_grant(client, account, agent["agentId"], audience="https://api.example.com")

    response = refresh(client, account, grant["refreshToken"], agent["agentId"])

    assert response.status_code == 201, response.text
    assert unverified_claims(response.json()["grantToken"])["aud"] == "https://api.example.com"


def test_refresh_keeps_delegation_claims(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    sub_agent = register_agent(client, account, name="sub-agent")
    child = delegate(client, account, grant["grantToken"], sub_agent["agentId"])
    assert child.status_code == 201, child.text

    response = refresh(client, account, child.json()["refreshToken"], sub_agent["agentId"])

    assert response.status_code == 201, response.text
    claims = unverified_claims(response.json()["grantToken"])
    assert claims["parentAgt"] == agent["did"]
    assert claims["parentGrnt"] == grant["grantId"]
    assert claims["delegationDepth"] == 1
    assert claims["agt"] == sub_agent["did"]


@pytest.mark.parametrize("body", [[], "ref_x", 42, None])
def test_refresh_body_not_object(client: httpx.Client, account: Account, body: object) -> None:
    response = client.post("/v1/token/refresh", headers=account.headers, json=body)
    assert_bad_request(response, "Request body must be a JSON object")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"refreshToken": "ref_x"},
        {"agentId": "ag_x"},
        {"refreshToken": "", "agentId": "ag_x"},
        {"refreshToken": "ref_x", "agentId": ""},
        {"refreshToken": 7, "agentId": "ag_x"},
        {"refreshToken": "ref_x", "agentId": ["ag_x"]},
        {"refreshToken": "r" * 513, "agentId": "ag_x"},
        {"refreshToken": "ref_x", "agentId": "a" * 257},
    ],
)
def test_refresh_missing_fields(client: httpx.Client, account: Account, body: dict[str, Any]) -> None:
    response = client.post("/v1/token/refresh", headers=account.headers, json=body)
    assert_bad_request(response, "refreshToken and agentId are required")


def test_refresh_unknown_token(client: httpx.Client, account: Account, agent: dict[str, Any]) -> None:
    response = refresh(client, account, "ref_" + "A" * 43, agent["agentId"])
    assert_bad_request(response, "Invalid refresh token")


def test_refresh_other_developers_token(
    daemon: Daemon, client: httpx.Client, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    other = open_account(daemon, client, name="Other developer")

    response = refresh(client, other, grant["refreshToken"], agent["agentId"])

    assert_bad_request(response, "Invalid refresh token")


def test_refresh_wrong_agent(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    other_agent = register_agent(client, account, name="other-agent")

    response = refresh(client, account, grant["refreshToken"], other_agent["agentId"])

    assert_bad_request(response, "Agent mismatch")
    # The mismatch must not have spent the token.
    assert refresh(client, account, grant["refreshToken"], agent["agentId"]).status_code == 201


def test_refresh_wrong_agent_on_used_token(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    other_agent = register_agent(client, account, name="other-agent")
    assert refresh(client, account, grant["refreshToken"], agent["agentId"]).status_code == 201

    response = refresh(client, account, grant["refreshToken"], other_agent["agentId"])

    assert_bad_request(response, "Agent mismatch")
    assert grant_status(client, account, grant["grantId"]) == "active"


def test_refresh_reuse_revokes_grant_and_descendants(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    sub_agent = register_agent(client, account, name="sub-agent")
    child = delegate(client, account, grant["grantToken"], sub_agent["agentId"])
    assert child.status_code == 201, child.text
    first = refresh(client, account, grant["refreshToken"], agent["agentId"])
    assert first.status_code == 201, first.text

    reused = refresh(client, account, grant["refreshToken"], agent["agentId"])

    assert_bad_request(reused, "Refresh token already used")
    assert grant_status(client, account, grant["grantId"]) == "revoked"
    assert grant_status(client, account, child.json()["grantId"]) == "revoked"
    assert not token_is_valid(client, account, grant["grantToken"])
    assert not token_is_valid(client, account, first.json()["grantToken"])
    assert not token_is_valid(client, account, child.json()["grantToken"])
    rotated = refresh(client, account, first.json()["refreshToken"], agent["agentId"])
    assert_bad_request(rotated, "Grant has been revoked")


def test_refresh_reuse_with_sdk_raises(
    account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    params = RefreshTokenParams(refresh_token=grant["refreshToken"], agent_id=agent["agentId"])
    account.sdk.tokens.refresh(params)

    # A second call is a new refresh to the SDK, so it sends a new Idempotency-Key.
    with pytest.raises(GrantexApiError, match="Refresh token already used"):
        account.sdk.tokens.refresh(params)


def test_refresh_revoked_grant(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    revoked = client.delete(f"/v1/grants/{grant['grantId']}", headers=account.headers)
    assert revoked.status_code == 204, revoked.text

    response = refresh(client, account, grant["refreshToken"], agent["agentId"])

    assert_bad_request(response, "Grant has been revoked")


def test_refresh_suspended_agent(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    suspend_agent(client, account, agent["agentId"])

    response = refresh(client, account, grant["refreshToken"], agent["agentId"])

    assert_bad_request(response, "Invalid refresh token")


def test_refresh_after_grant_expiry(client: httpx.Client, account: Account, agent: dict[str, Any]) -> None:
    grant = issue_grant(client, account, agent["agentId"], expiresIn="1s")
    expires_at = datetime.fromisoformat(grant["expiresAt"].replace("Z", "+00:00")).timestamp()
    # The refresh token expires with the grant, so wait until that moment has passed.
    time.sleep(max(0.0, expires_at - time.time()) + 0.1)

    response = refresh(client, account, grant["refreshToken"], agent["agentId"])

    assert_bad_request(response, "Refresh token expired")


def test_refresh_retry_same_key_replays(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    key = str(uuid.uuid4())
    first = refresh(client, account, grant["refreshToken"], agent["agentId"], key)
    assert first.status_code == 201, first.text

    retried = refresh(client, account, grant["refreshToken"], agent["agentId"], key)

    assert retried.status_code == 201, retried.text
    assert retried.json() == first.json()
    assert grant_status(client, account, grant["grantId"]) == "active"
    assert token_is_valid(client, account, first.json()["grantToken"])
    assert refresh(client, account, first.json()["refreshToken"], agent["agentId"]).status_code == 201


def test_refresh_sdk_retry_same_key_replays(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    params = RefreshTokenParams(
        refresh_token=grant["refreshToken"], agent_id=agent["agentId"], idempotency_key="retry-key-1"
    )
    first = account.sdk.tokens.refresh(params)

    retried = account.sdk.tokens.refresh(params)

    assert retried == first
    assert grant_status(client, account, grant["grantId"]) == "active"


def test_refresh_new_key_after_success_is_reuse(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    first = refresh(client, account, grant["refreshToken"], agent["agentId"], "key-a")
    assert first.status_code == 201, first.text

    response = refresh(client, account, grant["refreshToken"], agent["agentId"], "key-b")

    assert_bad_request(response, "Refresh token already used")
    assert grant_status(client, account, grant["grantId"]) == "revoked"


def test_refresh_same_key_other_developer(
    daemon: Daemon, client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    first = refresh(client, account, grant["refreshToken"], agent["agentId"], "shared-key")
    assert first.status_code == 201, first.text
    other = open_account(daemon, client, name="Other developer")

    response = refresh(client, other, grant["refreshToken"], agent["agentId"], "shared-key")

    assert_bad_request(response, "Invalid refresh token")


def test_refresh_concurrent_same_key(
    daemon: Daemon, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    key = str(uuid.uuid4())
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(
                pool.map(lambda _: refresh(http, account, grant["refreshToken"], agent["agentId"], key), range(10))
            )

        assert [response.status_code for response in responses] == [201] * 10
        assert len({response.text for response in responses}) == 1
        assert grant_status(http, account, grant["grantId"]) == "active"


def test_refresh_concurrent_different_keys(
    daemon: Daemon, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        with ThreadPoolExecutor(max_workers=5) as pool:
            responses = list(
                pool.map(
                    lambda index: refresh(http, account, grant["refreshToken"], agent["agentId"], f"key-{index}"),
                    range(5),
                )
            )

        statuses = sorted(response.status_code for response in responses)
        assert statuses == [201, 400, 400, 400, 400]
        rejected = [response.json()["message"] for response in responses if response.status_code == 400]
        assert rejected == ["Refresh token already used"] * 4
        assert grant_status(http, account, grant["grantId"]) == "revoked"


@pytest.mark.parametrize("key", ["k" * 300, "", "tab\there"])
def test_refresh_bad_idempotency_key(
    client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any], key: str
) -> None:
    response = refresh(client, account, grant["refreshToken"], agent["agentId"], key)

    assert response.status_code == 400, response.text
    assert "Idempotency-Key" in response.json()["message"]
    # A rejected header must not have spent the refresh token.
    assert refresh(client, account, grant["refreshToken"], agent["agentId"]).status_code == 201


def test_refresh_tokens_stored_hashed_not_logged(
    daemon: Daemon, client: httpx.Client, account: Account, agent: dict[str, Any], grant: dict[str, Any]
) -> None:
    refreshed = refresh(client, account, grant["refreshToken"], agent["agentId"], "stored-key")
    assert refreshed.status_code == 201, refreshed.text
    plaintexts = [grant["refreshToken"], refreshed.json()["refreshToken"]]
    database_url = daemon.environ["DATABASE_URL"]

    rows = query(database_url, "SELECT id, token_hash FROM refresh_tokens")
    stored_text = "\n".join(f"{row['id']} {row['token_hash']}" for row in rows)
    replays = query(database_url, "SELECT lookup_hash, ciphertext FROM refresh_replays")

    for plaintext in plaintexts:
        assert plaintext not in daemon.output()
        assert plaintext not in stored_text
        assert sha256_hex(plaintext) in stored_text
        for replay in replays:
            assert plaintext not in replay["lookup_hash"]
            assert plaintext.encode() not in bytes(replay["ciphertext"])


def test_refresh_token_expiry_bounds(
    daemon: Daemon, client: httpx.Client, account: Account, agent: dict[str, Any]
) -> None:
    short = issue_grant(client, account, agent["agentId"], expiresIn="2h")
    long = issue_grant(client, account, agent["agentId"], expiresIn="60d")
    refreshed = refresh(client, account, long["refreshToken"], agent["agentId"])
    assert refreshed.status_code == 201, refreshed.text

    rows = query(
        daemon.environ["DATABASE_URL"],
        """
        SELECT r.grant_id, r.expires_at AS refresh_expires_at, r.created_at, g.expires_at AS grant_expires_at
        FROM refresh_tokens r JOIN grants g ON g.id = r.grant_id
        WHERE r.grant_id = ANY($1::text[])
        """,
        [short["grantId"], long["grantId"]],
    )

    short_rows = [row for row in rows if row["grant_id"] == short["grantId"]]
    long_rows = [row for row in rows if row["grant_id"] == long["grantId"]]
    assert len(short_rows) == 1
    assert len(long_rows) == 2
    assert short_rows[0]["refresh_expires_at"] == short_rows[0]["grant_expires_at"]
    for row in long_rows:
        # created_at is the database's transaction start, a few milliseconds off the daemon's clock.
        lifetime = row["refresh_expires_at"] - row["created_at"]
        assert abs(lifetime - timedelta(days=30)) < timedelta(minutes=1)
        assert row["refresh_expires_at"] < row["grant_expires_at"]
