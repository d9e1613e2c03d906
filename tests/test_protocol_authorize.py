"""Authorization over HTTP: /v1/authorize, the sandbox shortcuts and the consent JSON API."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import trio

from tests.protocol_support import (
    ISO_TIMESTAMP,
    PKCE_CHALLENGE,
    ULID,
    Developer,
    assert_error,
    authorize,
    create_agent,
    expire_auth_request,
    make_pending,
    new_developer,
)
from tests.support import Daemon

REQUIRED = "agentId, principalId, and scopes are required"
SCOPE_FORMAT = "Invalid scope format"
EXPIRES_IN = 'Invalid expiresIn format. Use e.g. "1h", "30m", "24h".'
STATE = "state must be 1024 characters or fewer"
AUDIENCE = "audience must be a non-empty string of at most 1024 characters"
PKCE_PAIR = "codeChallenge and codeChallengeMethod must be provided together"
PKCE_S256 = "codeChallengeMethod must be S256 and codeChallenge must be a valid S256 digest"
GONE = "Auth request expired or already processed"
NOT_PROCESSABLE = "Auth request not found or already processed"


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def post_authorize(client: httpx.Client, developer: Developer, body: Any) -> httpx.Response:
    return client.post("/v1/authorize", json=body, headers=developer.headers)


def live_request(client: httpx.Client, **fields: Any) -> tuple[Developer, dict[str, Any], dict[str, Any]]:
    developer = new_developer(client, mode="live")
    agent = create_agent(client, developer, name="mail-agent", description="Sends mail")
    request = authorize(client, developer, agent["agentId"], **fields)
    return developer, agent, request


def test_authorize_sandbox_response(client: httpx.Client, daemon: Daemon) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    before = datetime.now(timezone.utc)
    response = post_authorize(
        client, developer, {"agentId": agent["agentId"], "principalId": "user-1", "scopes": ["calendar:read"]}
    )
    after = datetime.now(timezone.utc)
    assert response.status_code == 201, response.text
    body = response.json()
    assert re.fullmatch(f"areq_{ULID}", body["authRequestId"])
    assert body["consentUrl"] == f"{daemon.base_url}/consent?req={body['authRequestId']}"
    assert ISO_TIMESTAMP.match(body["expiresAt"])
    expires_at = parse_iso(body["expiresAt"])
    assert before + timedelta(hours=24) - timedelta(seconds=1) <= expires_at
    assert expires_at <= after + timedelta(hours=24)
    assert body["sandbox"] is True
    assert re.fullmatch(ULID, body["code"])


def test_authorize_live_response(client: httpx.Client) -> None:
    developer, _, request = live_request(client, expiresIn="30m")
    assert "code" not in request
    assert "sandbox" not in request
    assert "policyEnforced" not in request
    created = datetime.now(timezone.utc)
    expires_at = parse_iso(request["expiresAt"])
    assert abs((expires_at - created) - timedelta(minutes=30)) < timedelta(minutes=1)


def test_authorize_accepts_sdk_extras(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    response = post_authorize(
        client,
        developer,
        {
            "agentId": agent["agentId"],
            "principalId": "p" * 256,
            "scopes": ["x" * 256] * 100,
            "purpose": "Book a trip",
            "dataRegion": "eu",
            "state": "",
            "audience": "a" * 1024,
            "redirectUri": "http://localhost:8080/callback",
            "codeChallenge": PKCE_CHALLENGE,
            "codeChallengeMethod": "S256",
            "expiresIn": "1d",
        },
    )
    assert response.status_code == 201, response.text


def test_authorize_body_not_object(client: httpx.Client) -> None:
    developer = new_developer(client)
    for body in ([], "text", 5, None):
        response = post_authorize(client, developer, body)
        assert_error(response, 400, "BAD_REQUEST", "Request body must be a JSON object")
    no_body = client.post("/v1/authorize", headers=developer.headers)
    assert_error(no_body, 400, "BAD_REQUEST", "Request body must be a JSON object")


_OMIT = object()
_HUNDRED_AND_ONE = [f"s{index}" for index in range(101)]


def _fields(agent_id: str, **overrides: Any) -> dict[str, Any]:
    """Return a valid authorize body with ``overrides`` applied, where ``_OMIT`` removes a field."""
    body: dict[str, Any] = {"agentId": agent_id, "principalId": "user-1", "scopes": ["calendar:read"]}
    for name, value in overrides.items():
        if value is _OMIT:
            body.pop(name, None)
        else:
            body[name] = value
    return body


# Each case lists the overrides of a valid body and the error it must produce. Cases that
# combine two faults check the processing order: the earlier step's message wins.
VALIDATION_CASES: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("agent missing", {"agentId": _OMIT}, 400, "BAD_REQUEST", REQUIRED),
    ("agent empty", {"agentId": ""}, 400, "BAD_REQUEST", REQUIRED),
    ("agent too long", {"agentId": "a" * 257}, 400, "BAD_REQUEST", REQUIRED),
    ("agent number", {"agentId": 5}, 400, "BAD_REQUEST", REQUIRED),
    ("principal missing", {"principalId": _OMIT}, 400, "BAD_REQUEST", REQUIRED),
    ("principal empty", {"principalId": ""}, 400, "BAD_REQUEST", REQUIRED),
    ("principal too long", {"principalId": "p" * 257}, 400, "BAD_REQUEST", REQUIRED),
    ("scopes missing", {"scopes": _OMIT}, 400, "BAD_REQUEST", REQUIRED),
    ("scopes empty", {"scopes": []}, 400, "BAD_REQUEST", REQUIRED),
    ("scopes string", {"scopes": "calendar:read"}, 400, "BAD_REQUEST", REQUIRED),
    ("required before scope", {"principalId": _OMIT, "scopes": [""]}, 400, "BAD_REQUEST", REQUIRED),
    ("scope empty", {"scopes": [""]}, 400, "BAD_REQUEST", SCOPE_FORMAT),
    ("scope blank", {"scopes": ["   "]}, 400, "BAD_REQUEST", SCOPE_FORMAT),
    ("scope number", {"scopes": [5]}, 400, "BAD_REQUEST", SCOPE_FORMAT),
    ("scope too long", {"scopes": ["x" * 257]}, 400, "BAD_REQUEST", SCOPE_FORMAT),
    ("too many scopes", {"scopes": _HUNDRED_AND_ONE}, 400, "BAD_REQUEST", "Too many scopes (max 100)"),
    ("scope before redirect", {"scopes": [""], "redirectUri": "/x"}, 400, "BAD_REQUEST", SCOPE_FORMAT),
    ("redirect number", {"redirectUri": 5}, 400, "BAD_REQUEST", "Invalid redirectUri"),
    (
        "redirect relative",
        {"redirectUri": "/callback"},
        400,
        "BAD_REQUEST",
        "Invalid redirectUri: URL must be absolute and valid",
    ),
    ("redirect empty", {"redirectUri": ""}, 400, "BAD_REQUEST", "Invalid redirectUri: URL must be absolute and valid"),
    (
        "redirect too long",
        {"redirectUri": "https://example.com/" + "a" * 2029},
        400,
        "BAD_REQUEST",
        "Invalid redirectUri: URL must be absolute and valid",
    ),
    (
        "redirect host with space",
        {"redirectUri": "https://exa mple.com/cb"},
        400,
        "BAD_REQUEST",
        "Invalid redirectUri: URL must be absolute and valid",
    ),
    (
        "redirect credentials",
        {"redirectUri": "https://user:secret@example.com/cb"},
        400,
        "BAD_REQUEST",
        "Invalid redirectUri: URL must not contain embedded credentials",
    ),
    (
        "redirect without host",
        {"redirectUri": "file:///etc/passwd"},
        400,
        "BAD_REQUEST",
        "Invalid redirectUri: URL must include a hostname",
    ),
    (
        "redirect protocol",
        {"redirectUri": "ftp://example.com/cb"},
        400,
        "BAD_REQUEST",
        "Invalid redirectUri: URL protocol must be one of: https:, http:",
    ),
    (
        "redirect before state",
        {"redirectUri": "/x", "state": "s" * 1025},
        400,
        "BAD_REQUEST",
        "Invalid redirectUri: URL must be absolute and valid",
    ),
    ("state too long", {"state": "s" * 1025}, 400, "BAD_REQUEST", STATE),
    ("state number", {"state": 5}, 400, "BAD_REQUEST", STATE),
    ("state before audience", {"state": "s" * 1025, "audience": ""}, 400, "BAD_REQUEST", STATE),
    ("audience empty", {"audience": ""}, 400, "BAD_REQUEST", AUDIENCE),
    ("audience too long", {"audience": "a" * 1025}, 400, "BAD_REQUEST", AUDIENCE),
    ("audience number", {"audience": 5}, 400, "BAD_REQUEST", AUDIENCE),
    ("audience before pkce", {"audience": "", "codeChallenge": PKCE_CHALLENGE}, 400, "BAD_REQUEST", AUDIENCE),
    ("challenge alone", {"codeChallenge": PKCE_CHALLENGE}, 400, "BAD_REQUEST", PKCE_PAIR),
    ("method alone", {"codeChallengeMethod": "S256"}, 400, "BAD_REQUEST", PKCE_PAIR),
    (
        "method plain",
        {"codeChallenge": PKCE_CHALLENGE, "codeChallengeMethod": "plain"},
        400,
        "BAD_REQUEST",
        PKCE_S256,
    ),
    (
        "challenge short",
        {"codeChallenge": PKCE_CHALLENGE[:-1], "codeChallengeMethod": "S256"},
        400,
        "BAD_REQUEST",
        PKCE_S256,
    ),
    (
        "challenge bad character",
        {"codeChallenge": PKCE_CHALLENGE[:-1] + "=", "codeChallengeMethod": "S256"},
        400,
        "BAD_REQUEST",
        PKCE_S256,
    ),
    (
        "challenge trailing newline",
        {"codeChallenge": PKCE_CHALLENGE + "\n", "codeChallengeMethod": "S256"},
        400,
        "BAD_REQUEST",
        PKCE_S256,
    ),
    (
        "pkce before agent",
        {"agentId": "ag_01J00000000000000000000000", "codeChallengeMethod": "S256"},
        400,
        "BAD_REQUEST",
        PKCE_PAIR,
    ),
    ("agent unknown", {"agentId": "ag_01J00000000000000000000000"}, 404, "NOT_FOUND", "Agent not found"),
    (
        "agent before expiresIn",
        {"agentId": "ag_01J00000000000000000000000", "expiresIn": "1w"},
        404,
        "NOT_FOUND",
        "Agent not found",
    ),
    ("expiresIn week", {"expiresIn": "1w"}, 400, "BAD_REQUEST", EXPIRES_IN),
    ("expiresIn zero", {"expiresIn": "0s"}, 400, "BAD_REQUEST", EXPIRES_IN),
    ("expiresIn fraction", {"expiresIn": "1.5h"}, 400, "BAD_REQUEST", EXPIRES_IN),
    ("expiresIn space", {"expiresIn": " 1h"}, 400, "BAD_REQUEST", EXPIRES_IN),
    ("expiresIn newline", {"expiresIn": "1h\n"}, 400, "BAD_REQUEST", EXPIRES_IN),
    ("expiresIn number", {"expiresIn": 3600}, 400, "BAD_REQUEST", EXPIRES_IN),
    ("expiresIn huge", {"expiresIn": "9" * 5000 + "d"}, 400, "BAD_REQUEST", EXPIRES_IN),
]


@pytest.mark.parametrize(
    ("overrides", "status", "code", "message"),
    [case[1:] for case in VALIDATION_CASES],
    ids=[case[0] for case in VALIDATION_CASES],
)
def test_authorize_validation(
    client: httpx.Client, overrides: dict[str, Any], status: int, code: str, message: str
) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    response = post_authorize(client, developer, _fields(agent["agentId"], **overrides))
    assert_error(response, status, code, message)


def test_authorize_foreign_agent(client: httpx.Client) -> None:
    developer = new_developer(client)
    foreign = create_agent(client, new_developer(client))
    response = post_authorize(client, developer, _fields(foreign["agentId"]))
    assert_error(response, 404, "NOT_FOUND", "Agent not found")


def test_authorize_suspended_agent(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    client.patch(f"/v1/agents/{agent['agentId']}", json={"status": "suspended"}, headers=developer.headers)
    response = post_authorize(client, developer, _fields(agent["agentId"]))
    assert_error(response, 404, "NOT_FOUND", "Agent not found")


def test_authorize_ignores_agent_scopes(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer, scopes=["calendar:read"])
    response = post_authorize(client, developer, _fields(agent["agentId"], scopes=["payments:initiate"]))
    assert response.status_code == 201, response.text


def test_authorize_registered_redirect_exact(client: httpx.Client) -> None:
    developer = new_developer(client)
    registered = "https://app.example.com/callback"
    agent = create_agent(client, developer, redirectUris=[registered, "https://other.example.com/cb"])
    accepted = post_authorize(client, developer, _fields(agent["agentId"], redirectUri=registered))
    assert accepted.status_code == 201, accepted.text

    message = "Invalid redirectUri: it must exactly match one of the agent's registered redirectUris"
    for near_miss in (
        registered + "/",
        registered + "?next=1",
        "https://APP.example.com/callback",
        "http://app.example.com/callback",
        "https://evil.example.com/callback",
    ):
        response = post_authorize(client, developer, _fields(agent["agentId"], redirectUri=near_miss))
        assert_error(response, 400, "BAD_REQUEST", message)


def test_authorize_unregistered_redirect_any(client: httpx.Client) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    response = post_authorize(client, developer, _fields(agent["agentId"], redirectUri="https://anything.example/cb"))
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("approve", "Live authorization requests must be approved through the consent flow"),
        ("deny", "Live authorization requests must be denied through the consent flow"),
    ],
)
def test_sandbox_endpoint_live_developer(client: httpx.Client, action: str, message: str) -> None:
    developer, _, request = live_request(client)
    response = client.post(f"/v1/authorize/{request['authRequestId']}/{action}", headers=developer.headers)
    assert_error(response, 403, "CONSENT_REQUIRED", message)
    # The request is untouched and still waits for consent.
    assert client.get(f"/v1/consent/{request['authRequestId']}").status_code == 200


def test_sandbox_approve_pending(client: httpx.Client, daemon: Daemon) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    request = authorize(client, developer, agent["agentId"])
    make_pending(daemon, request["authRequestId"])

    response = client.post(f"/v1/authorize/{request['authRequestId']}/approve", headers=developer.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["requestId", "status", "code"]
    assert body["requestId"] == request["authRequestId"]
    assert body["status"] == "approved"
    assert re.fullmatch(ULID, body["code"])

    again = client.post(f"/v1/authorize/{request['authRequestId']}/approve", headers=developer.headers)
    assert_error(again, 404, "NOT_FOUND", NOT_PROCESSABLE)


def test_sandbox_deny_pending(client: httpx.Client, daemon: Daemon) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    request = authorize(client, developer, agent["agentId"])
    make_pending(daemon, request["authRequestId"])

    response = client.post(f"/v1/authorize/{request['authRequestId']}/deny", headers=developer.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"requestId": request["authRequestId"], "status": "denied"}

    approve = client.post(f"/v1/authorize/{request['authRequestId']}/approve", headers=developer.headers)
    assert_error(approve, 404, "NOT_FOUND", NOT_PROCESSABLE)


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_sandbox_endpoint_not_processable(client: httpx.Client, daemon: Daemon, action: str) -> None:
    developer = new_developer(client)
    agent = create_agent(client, developer)
    approved = authorize(client, developer, agent["agentId"])
    expired = authorize(client, developer, agent["agentId"])
    make_pending(daemon, expired["authRequestId"])
    expire_auth_request(daemon, expired["authRequestId"])
    other = new_developer(client)
    foreign = authorize(client, other, create_agent(client, other)["agentId"])
    make_pending(daemon, foreign["authRequestId"])

    for request_id in (
        "areq_01J00000000000000000000000",
        approved["authRequestId"],
        expired["authRequestId"],
        foreign["authRequestId"],
    ):
        response = client.post(f"/v1/authorize/{request_id}/{action}", headers=developer.headers)
        assert_error(response, 404, "NOT_FOUND", NOT_PROCESSABLE)


def test_consent_details(client: httpx.Client) -> None:
    scopes = [
        "calendar:read",
        "calendar:write",
        "email:read",
        "email:send",
        "email:delete",
        "files:read",
        "files:write",
        "payments:read",
        "payments:initiate",
        "profile:read",
        "contacts:read",
        "payments:initiate:max_500",
        "payments:initiate:max_",
        "custom:thing",
    ]
    _, agent, request = live_request(client, scopes=scopes)

    response = client.get(f"/v1/consent/{request['authRequestId']}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == request["authRequestId"]
    assert body["agentName"] == "mail-agent"
    assert body["agentDid"] == agent["did"]
    assert body["agentDescription"] == "Sends mail"
    assert body["scopes"] == scopes
    assert body["scopeDescriptions"] == [
        "Read your calendar events",
        "Create, modify, and delete your calendar events",
        "Read your email messages",
        "Send emails on your behalf",
        "Delete your email messages",
        "Read your files and documents",
        "Create and modify your files",
        "View your payment history and balances",
        "Initiate payments of any amount",
        "Read your profile and identity information",
        "Read your address book and contacts",
        "Initiate payments up to 500 in your account's base currency",
        "payments:initiate:max_",
        "custom:thing",
    ]
    assert body["expiresAt"] == request["expiresAt"]
    assert body["status"] == "pending"
    assert body["fidoRequired"] is False


def test_consent_details_not_found(client: httpx.Client) -> None:
    response = client.get("/v1/consent/areq_01J00000000000000000000000")
    assert_error(response, 404, "NOT_FOUND", "Auth request not found")


def test_consent_details_gone(client: httpx.Client, daemon: Daemon) -> None:
    _, _, approved = live_request(client)
    assert client.post(f"/v1/consent/{approved['authRequestId']}/approve").status_code == 200
    _, _, expired = live_request(client)
    expire_auth_request(daemon, expired["authRequestId"])
    sandbox = new_developer(client)
    auto_approved = authorize(client, sandbox, create_agent(client, sandbox)["agentId"])

    for request_id in (approved["authRequestId"], expired["authRequestId"], auto_approved["authRequestId"]):
        assert_error(client.get(f"/v1/consent/{request_id}"), 410, "GONE", GONE)


def test_consent_approve(client: httpx.Client) -> None:
    _, _, request = live_request(client)
    response = client.post(f"/v1/consent/{request['authRequestId']}/approve")
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["code"]
    assert re.fullmatch(ULID, body["code"])

    again = client.post(f"/v1/consent/{request['authRequestId']}/approve")
    assert_error(again, 410, "GONE", GONE)
    deny = client.post(f"/v1/consent/{request['authRequestId']}/deny")
    assert_error(deny, 404, "NOT_FOUND", NOT_PROCESSABLE)


async def test_consent_approve_concurrent(client: httpx.Client, daemon: Daemon) -> None:
    _, _, request = live_request(client)
    responses: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as http:

        async def approve() -> None:
            responses.append(await http.post(f"/v1/consent/{request['authRequestId']}/approve"))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(approve)

    assert sorted(response.status_code for response in responses) == [200] + [410] * 19


def test_consent_approve_redirect_fields(client: httpx.Client) -> None:
    _, _, request = live_request(client, redirectUri="https://app.example.com/cb?keep=1", state="xyz")
    body = client.post(f"/v1/consent/{request['authRequestId']}/approve").json()
    assert body["redirectUri"] == "https://app.example.com/cb?keep=1"
    assert body["state"] == "xyz"


def test_consent_approve_empty_state_omitted(client: httpx.Client) -> None:
    _, _, request = live_request(client, redirectUri="https://app.example.com/cb", state="")
    body = client.post(f"/v1/consent/{request['authRequestId']}/approve").json()
    assert body["redirectUri"] == "https://app.example.com/cb"
    assert "state" not in body


def test_consent_approve_gone(client: httpx.Client, daemon: Daemon) -> None:
    _, _, expired = live_request(client)
    expire_auth_request(daemon, expired["authRequestId"])
    _, _, denied = live_request(client)
    assert client.post(f"/v1/consent/{denied['authRequestId']}/deny").status_code == 200

    for request_id in ("areq_01J00000000000000000000000", expired["authRequestId"], denied["authRequestId"]):
        assert_error(client.post(f"/v1/consent/{request_id}/approve"), 410, "GONE", GONE)


def test_consent_deny(client: httpx.Client) -> None:
    _, _, request = live_request(client)
    response = client.post(f"/v1/consent/{request['authRequestId']}/deny")
    assert response.status_code == 200, response.text
    assert response.json() == {}

    again = client.post(f"/v1/consent/{request['authRequestId']}/deny")
    assert_error(again, 404, "NOT_FOUND", NOT_PROCESSABLE)
    assert_error(client.get(f"/v1/consent/{request['authRequestId']}"), 410, "GONE", GONE)


def test_consent_deny_redirect_fields(client: httpx.Client) -> None:
    _, _, request = live_request(client, redirectUri="https://app.example.com/cb", state="s1")
    response = client.post(f"/v1/consent/{request['authRequestId']}/deny")
    assert response.json() == {"redirectUri": "https://app.example.com/cb", "state": "s1"}


def test_consent_deny_expired(client: httpx.Client, daemon: Daemon) -> None:
    # Deny does not check expiry: a pending request can be refused after its lifetime.
    _, _, request = live_request(client)
    expire_auth_request(daemon, request["authRequestId"])
    response = client.post(f"/v1/consent/{request['authRequestId']}/deny")
    assert response.status_code == 200, response.text


def test_consent_deny_not_found(client: httpx.Client) -> None:
    response = client.post("/v1/consent/areq_01J00000000000000000000000/deny")
    assert_error(response, 404, "NOT_FOUND", NOT_PROCESSABLE)


def test_consent_ignores_credentials(client: httpx.Client) -> None:
    _, _, request = live_request(client)
    response = client.get(f"/v1/consent/{request['authRequestId']}", headers={"Authorization": "Bearer junk"})
    assert response.status_code == 200, response.text
