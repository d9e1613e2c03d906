"""Tokens and grants over HTTP: code exchange, verify, revoke, and the grants endpoints."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from typing import Any

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.protocol_support import (
    ISO_TIMESTAMP,
    PKCE_CHALLENGE,
    PKCE_VERIFIER,
    ULID,
    Developer,
    assert_error,
    authorize,
    create_agent,
    database_url,
    exchange,
    expire_auth_request,
    issue_grant,
    jwt_part,
    new_developer,
)
from tests.support import Daemon, query

CODE_REQUIRED = "code and agentId are required"


def verify(client: httpx.Client, developer: Developer, token: Any) -> httpx.Response:
    return client.post("/v1/tokens/verify", json={"token": token}, headers=developer.headers)


def sandbox_agent(client: httpx.Client) -> tuple[Developer, dict[str, Any]]:
    developer = new_developer(client)
    return developer, create_agent(client, developer)


def test_exchange_response(client: httpx.Client, daemon: Daemon) -> None:
    developer, agent = sandbox_agent(client)
    request = authorize(client, developer, agent["agentId"], principalId="alice", scopes=["a", "b"], expiresIn="2h")
    response = exchange(client, developer, request["code"], agent["agentId"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert list(body) == ["grantToken", "expiresAt", "scopes", "refreshToken", "grantId"]
    assert body["scopes"] == ["a", "b"]
    assert body["refreshToken"].startswith("ref_")
    assert re.fullmatch(f"grnt_{ULID}", body["grantId"])
    assert ISO_TIMESTAMP.match(body["expiresAt"])

    header = jwt_part(body["grantToken"], 0)
    assert header["alg"] == "RS256"
    assert "typ" not in header
    jwks = client.get("/.well-known/jwks.json").json()
    assert header["kid"] in [key["kid"] for key in jwks["keys"]]

    claims = jwt_part(body["grantToken"], 1)
    assert claims["iss"] == daemon.base_url
    assert claims["sub"] == "alice"
    assert claims["agt"] == agent["did"]
    assert claims["dev"] == developer.id
    assert claims["scp"] == ["a", "b"]
    assert re.fullmatch(f"tok_{ULID}", claims["jti"])
    assert claims["grnt"] == body["grantId"]
    assert "aud" not in claims
    assert claims["exp"] - claims["iat"] == 7200
    expires_at = datetime.strptime(body["expiresAt"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert int(expires_at.timestamp()) == claims["exp"]


def test_exchange_audience_claim(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"], audience="https://api.example.com")
    assert jwt_part(grant["grantToken"], 1)["aud"] == "https://api.example.com"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "Request body must be a JSON object"),
        ("code", "Request body must be a JSON object"),
        ({}, CODE_REQUIRED),
        ({"code": "c"}, CODE_REQUIRED),
        ({"agentId": "ag_x"}, CODE_REQUIRED),
        ({"code": "", "agentId": "ag_x"}, CODE_REQUIRED),
        ({"code": 5, "agentId": "ag_x"}, CODE_REQUIRED),
        ({"code": "c" * 513, "agentId": "ag_x"}, CODE_REQUIRED),
        ({"code": "c", "agentId": "a" * 257}, CODE_REQUIRED),
        ({"code": "c", "agentId": ["ag_x"]}, CODE_REQUIRED),
        ({"code": "c", "agentId": "ag_x", "codeVerifier": 5}, "codeVerifier must be a string"),
        (
            {"code": "c", "agentId": "ag_x", "codeVerifier": 5, "credentialFormat": "pdf"},
            "codeVerifier must be a string",
        ),
        ({"code": "c", "agentId": "ag_x", "credentialFormat": "pdf"}, "Invalid credentialFormat"),
        ({"code": "c", "agentId": "ag_x", "credentialFormat": 1}, "Invalid credentialFormat"),
        ({"code": "c", "agentId": "ag_x"}, "Invalid code"),
    ],
)
def test_exchange_validation(client: httpx.Client, body: Any, message: str) -> None:
    developer = new_developer(client)
    response = client.post("/v1/token", json=body, headers=developer.headers)
    assert_error(response, 400, "BAD_REQUEST", message)


def test_exchange_invalid_code_cases(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    other_agent = create_agent(client, developer, name="other")
    code = authorize(client, developer, agent["agentId"])["code"]
    stranger = new_developer(client)
    stranger_agent = create_agent(client, stranger)

    wrong_agent = exchange(client, developer, code, other_agent["agentId"])
    assert_error(wrong_agent, 400, "BAD_REQUEST", "Invalid code")
    foreign_caller = exchange(client, stranger, code, agent["agentId"])
    assert_error(foreign_caller, 400, "BAD_REQUEST", "Invalid code")
    foreign_agent = exchange(client, stranger, code, stranger_agent["agentId"])
    assert_error(foreign_agent, 400, "BAD_REQUEST", "Invalid code")

    # None of the failed attempts used the code up.
    assert exchange(client, developer, code, agent["agentId"]).status_code == 201


def test_exchange_suspended_agent(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    code = authorize(client, developer, agent["agentId"])["code"]
    client.patch(f"/v1/agents/{agent['agentId']}", json={"status": "suspended"}, headers=developer.headers)
    assert_error(exchange(client, developer, code, agent["agentId"]), 400, "BAD_REQUEST", "Invalid code")


def test_exchange_reused_code(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    code = authorize(client, developer, agent["agentId"])["code"]
    assert exchange(client, developer, code, agent["agentId"]).status_code == 201
    again = exchange(client, developer, code, agent["agentId"])
    assert_error(again, 400, "BAD_REQUEST", "Auth request not approved")


def test_exchange_expired_request(client: httpx.Client, daemon: Daemon) -> None:
    developer, agent = sandbox_agent(client)
    request = authorize(client, developer, agent["agentId"])
    expire_auth_request(daemon, request["authRequestId"])
    response = exchange(client, developer, request["code"], agent["agentId"])
    assert_error(response, 400, "BAD_REQUEST", "Auth request expired")


def test_exchange_pkce(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    code = authorize(
        client, developer, agent["agentId"], codeChallenge=PKCE_CHALLENGE, codeChallengeMethod="S256"
    )["code"]

    missing = exchange(client, developer, code, agent["agentId"])
    assert_error(missing, 400, "BAD_REQUEST", "codeVerifier is required for PKCE")
    wrong = exchange(client, developer, code, agent["agentId"], codeVerifier="A" * 43)
    assert_error(wrong, 400, "BAD_REQUEST", "Invalid codeVerifier")
    short = exchange(client, developer, code, agent["agentId"], codeVerifier=PKCE_VERIFIER[:42])
    assert_error(short, 400, "BAD_REQUEST", "Invalid codeVerifier")
    bad_character = exchange(client, developer, code, agent["agentId"], codeVerifier=PKCE_VERIFIER + "+")
    assert_error(bad_character, 400, "BAD_REQUEST", "Invalid codeVerifier")

    # Failed verifications do not consume the code.
    correct = exchange(client, developer, code, agent["agentId"], codeVerifier=PKCE_VERIFIER)
    assert correct.status_code == 201, correct.text


def test_exchange_verifier_without_challenge(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    code = authorize(client, developer, agent["agentId"])["code"]
    response = exchange(client, developer, code, agent["agentId"], codeVerifier="anything", credentialFormat="jwt")
    assert response.status_code == 201, response.text


def test_exchange_live_consent_code(client: httpx.Client) -> None:
    developer = new_developer(client, mode="live")
    agent = create_agent(client, developer)
    request = authorize(client, developer, agent["agentId"])
    code = client.post(f"/v1/consent/{request['authRequestId']}/approve").json()["code"]
    response = exchange(client, developer, code, agent["agentId"])
    assert response.status_code == 201, response.text


async def test_exchange_single_use_concurrent(client: httpx.Client, daemon: Daemon) -> None:
    developer, agent = sandbox_agent(client)
    code = authorize(client, developer, agent["agentId"])["code"]
    responses: list[httpx.Response] = []

    async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as http:

        async def redeem() -> None:
            responses.append(
                await http.post(
                    "/v1/token", json={"code": code, "agentId": agent["agentId"]}, headers=developer.headers
                )
            )

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(redeem)

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [400] * 19
    messages = {response.json()["message"] for response in responses if response.status_code == 400}
    assert messages == {"Auth request not approved"}
    rows = query(
        database_url(daemon), "SELECT count(*) AS grants FROM grants WHERE agent_id = $1", agent["agentId"]
    )
    assert rows[0]["grants"] == 1
    tokens = query(
        database_url(daemon),
        "SELECT count(*) AS tokens FROM grant_tokens t JOIN grants g ON g.id = t.grant_id WHERE g.agent_id = $1",
        agent["agentId"],
    )
    assert tokens[0]["tokens"] == 1


def test_verify_valid_token(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"], principalId="bob", scopes=["files:read"])
    response = verify(client, developer, grant["grantToken"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "valid": True,
        "grantId": grant["grantId"],
        "scopes": ["files:read"],
        "principal": "bob",
        "agent": agent["did"],
        "expiresAt": body["expiresAt"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", body["expiresAt"])
    assert body["expiresAt"] == grant["expiresAt"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _server_public_pem(client: httpx.Client) -> bytes:
    key = client.get("/.well-known/jwks.json").json()["keys"][0]
    numbers = rsa.RSAPublicNumbers(
        e=int.from_bytes(base64.urlsafe_b64decode(key["e"] + "=="), "big"),
        n=int.from_bytes(base64.urlsafe_b64decode(key["n"] + "=="), "big"),
    )
    return numbers.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _forged_tokens(client: httpx.Client, grant_token: str) -> list[str]:
    header, payload, signature = grant_token.split(".")
    claims = jwt_part(grant_token, 1)
    kid = jwt_part(grant_token, 0)["kid"]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    unsigned_header = _b64url(json.dumps({"alg": "none"}).encode())
    # Algorithm confusion: HS256 keyed with the server's own public key.
    hs_header = _b64url(json.dumps({"alg": "HS256", "kid": kid}).encode())
    hs_signature = hmac.new(_server_public_pem(client), f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    return [
        "garbage",
        "a.b.c",
        "x" * 10_000,
        f"{header}.{payload}.{signature[:-4]}AAAA",
        f"{header}.{_b64url(json.dumps({**claims, 'scp': ['everything']}).encode())}.{signature}",
        f"{unsigned_header}.{payload}.",
        f"{hs_header}.{payload}.{_b64url(hs_signature)}",
        jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": kid}),
        jwt.encode(claims, other_key, algorithm="RS256"),
        f"{_b64url(b'[]')}.{payload}.{signature}",
    ]


def test_verify_rejects_forgeries(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    for token in _forged_tokens(client, grant["grantToken"]):
        response = verify(client, developer, token)
        assert response.status_code == 200, (token, response.text)
        assert response.json() == {"valid": False}, token
    assert verify(client, developer, grant["grantToken"]).json()["valid"] is True


def test_verify_other_developer(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    stranger = new_developer(client)
    response = verify(client, stranger, grant["grantToken"])
    assert response.status_code == 200
    assert response.json() == {"valid": False}


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 5}, {"token": None}, [], "token"])
def test_verify_requires_token(client: httpx.Client, body: Any) -> None:
    developer = new_developer(client)
    response = client.post("/v1/tokens/verify", json=body, headers=developer.headers)
    assert_error(response, 400, "BAD_REQUEST", "token is required")


def test_revoke_token(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    jti = jwt_part(grant["grantToken"], 1)["jti"]

    response = client.post("/v1/tokens/revoke", json={"jti": jti}, headers=developer.headers)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert verify(client, developer, grant["grantToken"]).json() == {"valid": False}

    # Only the token is revoked; the grant stays active.
    assert client.get(f"/v1/grants/{grant['grantId']}", headers=developer.headers).json()["status"] == "active"

    again = client.post("/v1/tokens/revoke", json={"jti": jti}, headers=developer.headers)
    assert_error(again, 404, "NOT_FOUND", "Token not found or already revoked")


def test_revoke_token_not_found(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    stranger = new_developer(client)
    for caller, jti in (
        (developer, "tok_01J00000000000000000000000"),
        (stranger, jwt_part(grant["grantToken"], 1)["jti"]),
    ):
        response = client.post("/v1/tokens/revoke", json={"jti": jti}, headers=caller.headers)
        assert_error(response, 404, "NOT_FOUND", "Token not found or already revoked")
    assert verify(client, developer, grant["grantToken"]).json()["valid"] is True


@pytest.mark.parametrize("body", [{}, {"jti": ""}, {"jti": 5}, {"jti": "t" * 513}, [], "tok_x"])
def test_revoke_requires_jti(client: httpx.Client, body: Any) -> None:
    developer = new_developer(client)
    response = client.post("/v1/tokens/revoke", json=body, headers=developer.headers)
    assert_error(response, 400, "BAD_REQUEST", "jti is required")


def test_suspended_agent_token_still_valid(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    client.patch(f"/v1/agents/{agent['agentId']}", json={"status": "suspended"}, headers=developer.headers)
    assert verify(client, developer, grant["grantToken"]).json()["valid"] is True


def test_get_grant(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"], principalId="carol", scopes=["email:read"])
    response = client.get(f"/v1/grants/{grant['grantId']}", headers=developer.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["grantId"] == grant["grantId"]
    assert body["agentId"] == agent["agentId"]
    assert body["principalId"] == "carol"
    assert body["developerId"] == developer.id
    assert body["scopes"] == ["email:read"]
    assert body["status"] == "active"
    assert ISO_TIMESTAMP.match(body["issuedAt"])
    assert body["expiresAt"] == grant["expiresAt"]
    assert "revokedAt" not in body
    assert body["delegationDepth"] == 0
    assert "parentGrantId" not in body


def test_get_grant_not_found(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    stranger = new_developer(client)
    for caller, grant_id in ((developer, "grnt_01J00000000000000000000000"), (stranger, grant["grantId"])):
        response = client.get(f"/v1/grants/{grant_id}", headers=caller.headers)
        assert_error(response, 404, "NOT_FOUND", "Grant not found")


def test_list_grants_filters(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    other_agent = create_agent(client, developer, name="other")
    first = issue_grant(client, developer, agent["agentId"], principalId="alice")
    second = issue_grant(client, developer, other_agent["agentId"], principalId="bob")
    third = issue_grant(client, developer, agent["agentId"], principalId="bob")
    assert client.delete(f"/v1/grants/{third['grantId']}", headers=developer.headers).status_code == 204
    stranger = new_developer(client)
    issue_grant(client, stranger, create_agent(client, stranger)["agentId"], principalId="alice")

    def listed(params: dict[str, str]) -> list[str]:
        response = client.get("/v1/grants", params=params, headers=developer.headers)
        assert response.status_code == 200, response.text
        return [grant["grantId"] for grant in response.json()["grants"]]

    assert listed({}) == [third["grantId"], second["grantId"], first["grantId"]]
    assert listed({"agentId": agent["agentId"]}) == [third["grantId"], first["grantId"]]
    assert listed({"principalId": "bob"}) == [third["grantId"], second["grantId"]]
    assert listed({"status": "active"}) == [second["grantId"], first["grantId"]]
    assert listed({"status": "revoked"}) == [third["grantId"]]
    assert listed({"status": "expired"}) == []
    assert listed({"agentId": agent["agentId"], "principalId": "alice"}) == [first["grantId"]]
    assert listed({"agentId": "ag_01J00000000000000000000000"}) == []


def test_list_grants_pagination(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    issued = [issue_grant(client, developer, agent["agentId"])["grantId"] for _ in range(3)]
    newest_first = list(reversed(issued))

    def page(number: str, size: str) -> list[str]:
        response = client.get("/v1/grants", params={"page": number, "pageSize": size}, headers=developer.headers)
        assert response.status_code == 200, response.text
        return [grant["grantId"] for grant in response.json()["grants"]]

    assert page("1", "2") == newest_first[:2]
    assert page("2", "2") == newest_first[2:]
    assert page("3", "2") == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"page": "0"}, "page must be a whole number from 1 to 1000000, got '0'"),
        ({"page": "x"}, "page must be a whole number from 1 to 1000000, got 'x'"),
        ({"page": "99999999999999999999"}, "page must be a whole number from 1 to 1000000, got '99999999999999999999'"),
        ({"pageSize": "0"}, "pageSize must be a whole number from 1 to 1000, got '0'"),
        ({"pageSize": "1001"}, "pageSize must be a whole number from 1 to 1000, got '1001'"),
        ({"pageSize": "-1"}, "pageSize must be a whole number from 1 to 1000, got '-1'"),
    ],
)
def test_list_grants_bad_page(client: httpx.Client, params: dict[str, str], message: str) -> None:
    developer = new_developer(client)
    response = client.get("/v1/grants", params=params, headers=developer.headers)
    assert_error(response, 400, "BAD_REQUEST", message)


def test_revoke_grant(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    response = client.delete(f"/v1/grants/{grant['grantId']}", headers=developer.headers)
    assert response.status_code == 204, response.text
    assert response.content == b""

    body = client.get(f"/v1/grants/{grant['grantId']}", headers=developer.headers).json()
    assert body["status"] == "revoked"
    assert ISO_TIMESTAMP.match(body["revokedAt"])
    assert verify(client, developer, grant["grantToken"]).json() == {"valid": False}

    again = client.delete(f"/v1/grants/{grant['grantId']}", headers=developer.headers)
    assert_error(again, 404, "NOT_FOUND", "Grant not found or already revoked")


def test_revoke_grant_not_found(client: httpx.Client) -> None:
    developer, agent = sandbox_agent(client)
    grant = issue_grant(client, developer, agent["agentId"])
    stranger = new_developer(client)
    for caller, grant_id in ((developer, "grnt_01J00000000000000000000000"), (stranger, grant["grantId"])):
        response = client.delete(f"/v1/grants/{grant_id}", headers=caller.headers)
        assert_error(response, 404, "NOT_FOUND", "Grant not found or already revoked")
    assert client.get(f"/v1/grants/{grant['grantId']}", headers=developer.headers).json()["status"] == "active"
