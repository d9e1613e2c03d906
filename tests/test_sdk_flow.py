"""The official grantex SDK against the real daemon: the full grant flow, sandbox and live."""

from __future__ import annotations

import warnings

import httpx
import pytest
from grantex import (
    AuthorizeParams,
    ExchangeTokenParams,
    Grantex,
    GrantexApiError,
    GrantexAuthError,
    GrantexTokenError,
    VerifyGrantTokenOptions,
    verify_grant_token,
)

from tests.support import Daemon, signup


def verify_offline(daemon: Daemon, token: str):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        # The SDK warns that agt/dev/scp are legacy aliases; they are the protocol's claims.
        warnings.simplefilter("ignore")
        return verify_grant_token(token, VerifyGrantTokenOptions(jwks_uri=f"{daemon.base_url}/.well-known/jwks.json"))


def test_sandbox_flow_with_sdk(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client, mode="sandbox")
    sdk = Grantex(api_key=developer["apiKey"], base_url=daemon.base_url)

    agent = sdk.agents.register(name="travel-agent", description="Books trips", scopes=["calendar:read"])
    assert agent.name == "travel-agent"
    assert agent.status == "active"
    assert agent.did == f"did:grantex:{agent.id}"

    request = sdk.authorize(AuthorizeParams(agent_id=agent.id, user_id="user-42", scopes=["calendar:read"]))
    assert request.sandbox is True
    assert request.code

    exchanged = sdk.tokens.exchange(ExchangeTokenParams(code=request.code, agent_id=agent.id))
    assert exchanged.grant_id.startswith("grnt_")
    assert exchanged.refresh_token.startswith("ref_")
    assert list(exchanged.scopes) == ["calendar:read"]

    verified = verify_offline(daemon, exchanged.grant_token)
    assert verified.principal_id == "user-42"
    assert verified.agent_did == agent.did
    assert verified.developer_id == developer["developerId"]
    assert list(verified.scopes) == ["calendar:read"]

    online = sdk.tokens.verify(exchanged.grant_token)
    assert online.valid is True
    assert online.grant_id == exchanged.grant_id
    assert online.principal == "user-42"

    sdk.tokens.revoke(verified.token_id)
    assert sdk.tokens.verify(exchanged.grant_token).valid is False


def test_live_flow_through_consent(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client, mode="live")
    sdk = Grantex(api_key=developer["apiKey"], base_url=daemon.base_url)
    agent = sdk.agents.register(name="mail-agent", description="Sends mail", scopes=["email:send"])

    request = sdk.authorize(
        AuthorizeParams(
            agent_id=agent.id,
            user_id="alice",
            scopes=["email:send", "payments:initiate:max_500"],
            redirect_uri="https://app.example.com/callback",
            state="xyz",
        )
    )
    assert not request.sandbox
    assert not request.code
    assert request.consent_url == f"{daemon.base_url}/consent?req={request.request_id}"

    consent = client.get(f"/v1/consent/{request.request_id}").json()
    assert consent["agentName"] == "mail-agent"
    assert consent["scopeDescriptions"] == [
        "Send emails on your behalf",
        "Initiate payments up to 500 in your account's base currency",
    ]

    approved = client.post(f"/v1/consent/{request.request_id}/approve")
    assert approved.status_code == 200
    body = approved.json()
    assert body["redirectUri"] == "https://app.example.com/callback"
    assert body["state"] == "xyz"

    exchanged = sdk.tokens.exchange(ExchangeTokenParams(code=body["code"], agent_id=agent.id))
    verified = verify_offline(daemon, exchanged.grant_token)
    assert verified.principal_id == "alice"

    assert sdk.tokens.verify(exchanged.grant_token).valid is True
    sdk.grants.revoke(exchanged.grant_id)
    assert sdk.tokens.verify(exchanged.grant_token).valid is False
    grant = sdk.grants.get(exchanged.grant_id)
    assert grant.status == "revoked"


def test_sdk_agent_update_and_delete(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client, mode="sandbox")
    sdk = Grantex(api_key=developer["apiKey"], base_url=daemon.base_url)
    agent = sdk.agents.register(name="first", description="", scopes=[])

    updated = sdk.agents.update(agent.id, name="renamed", scopes=["files:read"])
    assert updated.name == "renamed"
    assert list(updated.scopes) == ["files:read"]
    assert [item.id for item in sdk.agents.list().agents] == [agent.id]

    sdk.agents.delete(agent.id)
    with pytest.raises(GrantexApiError, match="Agent not found"):
        sdk.agents.get(agent.id)


def test_sdk_rejects_bad_key(daemon: Daemon) -> None:
    sdk = Grantex(api_key="gx_live_not_a_real_key_at_all", base_url=daemon.base_url)
    with pytest.raises(GrantexAuthError, match="Invalid API key"):
        sdk.agents.list()


def test_offline_verify_rejects_tampered_token(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client, mode="sandbox")
    sdk = Grantex(api_key=developer["apiKey"], base_url=daemon.base_url)
    agent = sdk.agents.register(name="a", description="", scopes=[])
    request = sdk.authorize(AuthorizeParams(agent_id=agent.id, user_id="bob", scopes=["files:read"]))
    token = sdk.tokens.exchange(ExchangeTokenParams(code=request.code, agent_id=agent.id)).grant_token
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(GrantexTokenError):
        verify_offline(daemon, tampered)
