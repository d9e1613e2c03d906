"""HTTP edges: bad bodies, unknown routes, request ids, security headers, HEAD, CORS and JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from grantexd.crypto.keys import generate_signing_key, private_key_pem
from tests.protocol_support import (
    ISO_TIMESTAMP,
    UUID_V4,
    Developer,
    assert_envelope,
    assert_error,
    authorize,
    create_agent,
    issue_grant,
    new_developer,
)
from tests.support import Backends, Daemon, create_database, drop_database, new_daemon, signup, stop_quietly

MIB = 1024 * 1024

# Every route that reads a JSON body, with a body it would accept apart from the field values.
BODY_ROUTES: list[tuple[str, str]] = [
    ("POST", "/v1/signup"),
    ("PATCH", "/v1/me"),
    ("POST", "/v1/agents"),
    ("POST", "/v1/authorize"),
    ("POST", "/v1/token"),
    ("POST", "/v1/tokens/verify"),
    ("POST", "/v1/tokens/revoke"),
]

SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "x-xss-protection": "0",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
}


@pytest.fixture
def developer(client: httpx.Client) -> Developer:
    return new_developer(client)


def send_raw(client: httpx.Client, method: str, path: str, content: bytes, content_type: str | None,
             headers: dict[str, str] | None = None) -> httpx.Response:
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return client.request(method, path, content=content, headers=all_headers)


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize(
    "content",
    [b"{bad", b"{\"a\":1,}", b"[1,2", b"\"unterminated", b"NaN", b'{"a":Infinity}', b"\xff\xfe\x00", b"   "],
)
@pytest.mark.parametrize("authenticated", [True, False])
def test_malformed_json_before_auth(
    client: httpx.Client, developer: Developer, method: str, path: str, content: bytes, authenticated: bool
) -> None:
    headers = developer.headers if authenticated else {}
    response = send_raw(client, method, path, content, "application/json", headers)
    assert response.status_code == 400, response.text
    assert_envelope(response)
    assert response.json()["code"] == "BAD_REQUEST"
    assert response.json()["message"].startswith("Request body is not valid JSON")


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("body", [[], [1, 2], 5, 1.5, "text", True, None])
def test_non_object_body(client: httpx.Client, developer: Developer, method: str, path: str, body: Any) -> None:
    response = client.request(method, path, json=body, headers=developer.headers)
    assert response.status_code == 400, response.text
    assert_envelope(response)


# Values of every JSON type; each is tried in place of each field of each route.
ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, 10**30, "", "x", [], ["x"], [1], {}, {"a": 1}]
FIELDS: dict[str, list[str]] = {
    "/v1/signup": ["name", "email", "mode"],
    "/v1/me": ["fidoRequired", "fidoRpName"],
    "/v1/agents": ["name", "description", "scopes", "redirectUris"],
    "/v1/authorize": [
        "agentId",
        "principalId",
        "scopes",
        "redirectUri",
        "state",
        "expiresIn",
        "audience",
        "codeChallenge",
        "codeChallengeMethod",
        "purpose",
    ],
    "/v1/token": ["code", "agentId", "codeVerifier", "credentialFormat"],
    "/v1/tokens/verify": ["token"],
    "/v1/tokens/revoke": ["jti"],
}


def test_wrong_field_types(client: httpx.Client, developer: Developer) -> None:
    agent = create_agent(client, developer)
    code = authorize(client, developer, agent["agentId"])["code"]
    valid: dict[str, dict[str, Any]] = {
        "/v1/signup": {"name": "n"},
        "/v1/me": {"fidoRpName": "Acme"},
        "/v1/agents": {"name": "a"},
        "/v1/authorize": {"agentId": agent["agentId"], "principalId": "p", "scopes": ["s"]},
        # An unknown code keeps the real one unspent, so every case reaches its own field check.
        "/v1/token": {"code": code + "X", "agentId": agent["agentId"]},
        "/v1/tokens/verify": {"token": "t"},
        "/v1/tokens/revoke": {"jti": "tok_x"},
    }
    for method, path in BODY_ROUTES:
        for field in FIELDS[path]:
            for value in ODD_VALUES:
                body = {**valid[path], field: value}
                response = client.request(method, path, json=body, headers=developer.headers)
                assert response.status_code < 500, (path, field, value, response.text)
                if response.status_code >= 400:
                    assert_envelope(response)


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("depth", [65, 5000, 200_000])
def test_deeply_nested_json(client: httpx.Client, developer: Developer, method: str, path: str, depth: int) -> None:
    content = b"[" * depth + b"]" * depth
    response = send_raw(client, method, path, content, "application/json", developer.headers)
    assert response.status_code == 400, response.text
    assert_envelope(response)


def test_nested_json_within_limit(client: httpx.Client, developer: Developer) -> None:
    nested: Any = "leaf"
    for _ in range(60):
        nested = {"n": nested}
    response = client.post("/v1/agents", json={"name": "deep", "extra": nested}, headers=developer.headers)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("authenticated", [True, False])
def test_body_over_limit(client: httpx.Client, developer: Developer, authenticated: bool) -> None:
    content = b'{"name":"' + b"x" * MIB + b'"}'
    headers = developer.headers if authenticated else {}
    response = send_raw(client, "POST", "/v1/agents", content, "application/json", headers)
    assert_error(response, 413, "BAD_REQUEST", f"Request body is larger than the limit of {MIB} bytes")


def test_body_at_limit(client: httpx.Client, developer: Developer) -> None:
    prefix, suffix = b'{"name":"big","description":"', b'"}'
    content = prefix + b"d" * (MIB - len(prefix) - len(suffix)) + suffix
    assert len(content) == MIB
    response = send_raw(client, "POST", "/v1/agents", content, "application/json", developer.headers)
    assert response.status_code == 201, response.text


def _chunks(total: int, size: int = 65536) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    yield b"0\r\n\r\n"


def test_chunked_body_over_limit(daemon: Daemon, developer: Developer) -> None:
    # A raw socket sends the whole chunked body before reading, so the early 413 is not lost
    # to a connection reset while the client is still writing.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as connection:
        connection.sendall(
            (
                "POST /v1/agents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {developer.api_key}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        for chunk in _chunks(MIB + 1):
            connection.sendall(chunk)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            part = connection.recv(65536)
            if not part:
                break
            received += part
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), received[:200]
    assert json.loads(body)["code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", "image/png"],
)
@pytest.mark.parametrize("authenticated", [True, False])
def test_unsupported_content_type(
    client: httpx.Client, developer: Developer, content_type: str, authenticated: bool
) -> None:
    headers = developer.headers if authenticated else {}
    response = send_raw(client, "POST", "/v1/agents", b"name=x", content_type, headers)
    assert response.status_code == 415, response.text
    assert_envelope(response)
    assert response.json()["code"] == "BAD_REQUEST"


def test_json_content_type_variants(client: httpx.Client, developer: Developer) -> None:
    for content_type in ("application/json; charset=utf-8", "APPLICATION/JSON", "application/merge-patch+json"):
        response = send_raw(client, "POST", "/v1/agents", b'{"name":"n"}', content_type, developer.headers)
        assert response.status_code == 201, (content_type, response.text)


def test_text_plain_body(client: httpx.Client, developer: Developer) -> None:
    response = send_raw(client, "POST", "/v1/agents", b'{"name":"n"}', "text/plain", developer.headers)
    assert_error(response, 400, "BAD_REQUEST", "name is required")


@pytest.mark.parametrize(
    ("method", "path"),
    [*BODY_ROUTES, ("POST", "/v1/keys/rotate"), ("DELETE", "/v1/grants/grnt_x"), ("POST", "/v1/consent/areq_x/deny")],
)
@pytest.mark.parametrize("authenticated", [True, False])
def test_json_content_type_empty_body(
    client: httpx.Client, developer: Developer, method: str, path: str, authenticated: bool
) -> None:
    headers = developer.headers if authenticated else {}
    response = send_raw(client, method, path, b"", "application/json", headers)
    assert_error(response, 400, "BAD_REQUEST", "Body cannot be empty when Content-Type is application/json")


def test_rotate_rejected_body_keeps_key(client: httpx.Client, developer: Developer) -> None:
    send_raw(client, "POST", "/v1/keys/rotate", b"", "application/json", developer.headers)
    assert client.get("/v1/me", headers=developer.headers).status_code == 200


@pytest.mark.parametrize(
    "content",
    [
        b'{"name":"a\\u0000b"}',
        b'{"name":"\\ud800"}',
        b'{"name":"ok","scopes":["\\udfff"]}',
        b'{"name":"ok","description":"\\u0000"}',
        b'{"name":"ok","\\u0000":1}',
        b'{"name":"ok","n":1e400}',
    ],
)
def test_unstorable_body_values(client: httpx.Client, developer: Developer, content: bytes) -> None:
    response = send_raw(client, "POST", "/v1/agents", content, "application/json", developer.headers)
    assert response.status_code == 400, response.text
    assert_envelope(response)


def test_paired_surrogates_accepted(client: httpx.Client, developer: Developer) -> None:
    response = send_raw(
        client, "POST", "/v1/agents", b'{"name":"rocket \\ud83d\\ude80"}', "application/json", developer.headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "rocket \U0001F680"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agents/ag_%00",
        "/v1/grants/%00",
        "/v1/grants?agentId=%00",
        "/v1/grants?status=a%00b",
        "/v1/consent/areq_%00",
        "/v1/agents/%ED%A0%80",
        "/v1/agents/%FF%FE",
    ],
)
def test_unusual_url_text(client: httpx.Client, developer: Developer, path: str) -> None:
    response = client.get(path, headers=developer.headers)
    assert response.status_code in (400, 404), response.text
    assert_envelope(response)


def test_unknown_route(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "NOT_FOUND", "Route GET:/v1/nothing-here not found")
    assert_error(client.post("/v1/nothing", json={}), 404, "NOT_FOUND", "Route POST:/v1/nothing not found")


def test_unknown_route_bad_body(client: httpx.Client) -> None:
    response = send_raw(client, "POST", "/v1/nothing", b"{bad", "application/json")
    assert_error(response, 404, "NOT_FOUND", "Route POST:/v1/nothing not found")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_audit_entry_write_methods(client: httpx.Client, developer: Developer, method: str) -> None:
    response = client.request(method, "/v1/audit/x", headers=developer.headers)
    assert response.status_code in (404, 405), response.text
    assert_envelope(response)


def test_method_not_allowed(client: httpx.Client, developer: Developer) -> None:
    response = client.put("/v1/agents", headers=developer.headers)
    assert response.status_code in (404, 405), response.text
    assert_envelope(response)


def test_request_id_on_every_response(client: httpx.Client, developer: Developer) -> None:
    agent = create_agent(client, developer)
    grant = issue_grant(client, developer, agent["agentId"])
    responses = [
        client.get("/v1/agents", headers=developer.headers),
        client.get("/.well-known/jwks.json"),
        client.get("/health"),
        client.delete(f"/v1/grants/{grant['grantId']}", headers=developer.headers),
        client.get("/v1/agents"),
        client.get("/nowhere"),
        client.head("/.well-known/jwks.json"),
        client.options("/v1/agents"),
    ]
    for response in responses:
        request_id = response.headers.get("x-request-id", "")
        assert UUID_V4.match(request_id), (response.request.url, request_id)
    ids = {response.headers["x-request-id"] for response in responses}
    assert len(ids) == len(responses)


def test_request_id_matches_error_body(client: httpx.Client) -> None:
    for response in (client.get("/v1/agents"), client.get("/nowhere"), client.post("/v1/signup", json={})):
        assert response.json()["requestId"] == response.headers["x-request-id"]


@pytest.mark.parametrize("incoming", ["abc-123", "req.42:7_x", "A" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e"])
def test_request_id_echoed(client: httpx.Client, incoming: str) -> None:
    response = client.get("/v1/agents", headers={"X-Request-Id": incoming})
    assert response.headers["x-request-id"] == incoming
    assert response.json()["requestId"] == incoming


@pytest.mark.parametrize("incoming", ["has space", "A" * 129, "x" * 500, "semi;colon", "quote\"d", "slash/ed", "é"])
def test_request_id_replaced(client: httpx.Client, incoming: str) -> None:
    response = client.get("/v1/agents", headers={"X-Request-Id": incoming.encode("utf-8")})
    assert response.headers["x-request-id"] != incoming
    assert UUID_V4.match(response.headers["x-request-id"])
    assert response.json()["requestId"] == response.headers["x-request-id"]


def test_security_headers(client: httpx.Client, developer: Developer) -> None:
    agent = create_agent(client, developer)
    grant = issue_grant(client, developer, agent["agentId"])
    responses = [
        client.get("/v1/agents", headers=developer.headers),
        client.get("/v1/agents"),
        client.get("/nowhere"),
        client.get("/.well-known/jwks.json"),
        client.delete(f"/v1/grants/{grant['grantId']}", headers=developer.headers),
        client.head("/.well-known/jwks.json"),
        client.post("/v1/signup", json={}),
        client.options("/v1/agents"),
    ]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.request.url, name)


def test_json_media_type(client: httpx.Client, developer: Developer) -> None:
    for response in (
        client.get("/v1/agents", headers=developer.headers),
        client.get("/v1/agents"),
        client.get("/.well-known/jwks.json"),
    ):
        assert response.headers["content-type"] == "application/json; charset=utf-8"


def test_no_content_response(client: httpx.Client, developer: Developer) -> None:
    agent = create_agent(client, developer)
    response = client.delete(f"/v1/agents/{agent['agentId']}", headers=developer.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers


def test_head_on_get_route(client: httpx.Client, developer: Developer) -> None:
    jwks = client.head("/.well-known/jwks.json")
    assert jwks.status_code == 200
    assert jwks.content == b""
    assert jwks.headers["content-type"] == "application/json; charset=utf-8"
    agents = client.head("/v1/agents", headers=developer.headers)
    assert agents.status_code == 200
    assert agents.content == b""
    unauthenticated = client.head("/v1/agents")
    assert unauthenticated.status_code == 401
    assert unauthenticated.content == b""


def test_no_cors_headers_without_origin(client: httpx.Client) -> None:
    response = client.get("/.well-known/jwks.json")
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture(scope="module")
def cors_daemon(backends: Backends) -> Iterator[Daemon]:
    url = create_database(backends)
    process = new_daemon(backends, url, CORS_ALLOWED_ORIGINS="https://app.example.com,http://localhost:5173")
    process.start()
    yield process
    stop_quietly(process)
    drop_database(backends, url)


def test_cors_preflight_allowed(cors_daemon: Daemon) -> None:
    with httpx.Client(base_url=cors_daemon.base_url) as http:
        response = http.options(
            "/v1/agents",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Content-Type, Authorization",
            },
        )
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-max-age"] == "600"
    methods = {method.strip() for method in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} <= methods
    allowed = {header.strip().lower() for header in response.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "authorization", "idempotency-key"} <= allowed
    assert "origin" in response.headers.get("vary", "").lower()


def test_cors_preflight_unknown_origin(cors_daemon: Daemon) -> None:
    with httpx.Client(base_url=cors_daemon.base_url) as http:
        response = http.options(
            "/v1/agents", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}
        )
    assert response.status_code == 204, response.text
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-credentials" not in response.headers


def test_cors_simple_request(cors_daemon: Daemon) -> None:
    with httpx.Client(base_url=cors_daemon.base_url) as http:
        allowed = http.get("/v1/agents", headers={"Origin": "http://localhost:5173"})
        unknown = http.get("/v1/agents", headers={"Origin": "http://localhost:5174"})
    assert allowed.status_code == 401
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
    exposed = {header.strip().lower() for header in allowed.headers["access-control-expose-headers"].split(",")}
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"} <= exposed
    assert unknown.status_code == 401
    assert "access-control-allow-origin" not in unknown.headers


def _thumbprint(jwk: dict[str, str]) -> str:
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def test_jwks_rsa_only(client: httpx.Client) -> None:
    first = client.get("/.well-known/jwks.json")
    second = client.get("/.well-known/jwks.json")
    assert first.status_code == 200
    keys = first.json()["keys"]
    assert keys
    for key in keys:
        assert key["kty"] == "RSA"
        assert key["alg"] == "RS256"
        assert key["use"] == "sig"
        assert key["e"] == "AQAB"
        assert set(key) == {"kty", "n", "e", "alg", "use", "kid"}
        assert "d" not in key
        assert key["kid"] == _thumbprint(key)
    assert second.json() == first.json()


def test_jwks_kid_stable_across_restart(backends: Backends, database_url: str) -> None:
    pem = private_key_pem(generate_signing_key())
    keys_seen = []
    for _ in range(2):
        process = new_daemon(backends, database_url, AUTO_GENERATE_KEYS="false", RSA_PRIVATE_KEY=pem)
        process.start()
        try:
            keys_seen.append(httpx.get(process.base_url + "/.well-known/jwks.json").json()["keys"])
        finally:
            stop_quietly(process)
    assert keys_seen[0] == keys_seen[1]
    assert len(keys_seen[0]) == 1
    public = rsa.RSAPublicNumbers(
        e=int.from_bytes(base64.urlsafe_b64decode(keys_seen[0][0]["e"] + "=="), "big"),
        n=int.from_bytes(base64.urlsafe_b64decode(keys_seen[0][0]["n"] + "=="), "big"),
    )
    loaded = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.public_key().public_numbers() == public


def test_timestamps_format(client: httpx.Client, developer: Developer) -> None:
    signup = client.post("/v1/signup", json={"name": "Times"}).json()
    agent = create_agent(client, developer)
    request = authorize(client, developer, agent["agentId"])
    grant = issue_grant(client, developer, agent["agentId"])
    client.delete(f"/v1/grants/{grant['grantId']}", headers=developer.headers)
    revoked = client.get(f"/v1/grants/{grant['grantId']}", headers=developer.headers).json()
    live = new_developer(client, mode="live")
    pending = authorize(client, live, create_agent(client, live)["agentId"])
    consent = client.get(f"/v1/consent/{pending['authRequestId']}").json()
    live_grant = issue_grant(client, developer, agent["agentId"])
    verified = client.post("/v1/tokens/verify", json={"token": live_grant["grantToken"]}, headers=developer.headers)
    rotated = client.post("/v1/keys/rotate", headers=live.headers).json()

    timestamps = {
        "signup.createdAt": signup["createdAt"],
        "agent.createdAt": agent["createdAt"],
        "agent.updatedAt": agent["updatedAt"],
        "authorize.expiresAt": request["expiresAt"],
        "token.expiresAt": grant["expiresAt"],
        "grant.issuedAt": revoked["issuedAt"],
        "grant.expiresAt": revoked["expiresAt"],
        "grant.revokedAt": revoked["revokedAt"],
        "consent.expiresAt": consent["expiresAt"],
        "verify.expiresAt": verified.json()["expiresAt"],
        "rotate.rotatedAt": rotated["rotatedAt"],
    }
    for name, value in timestamps.items():
        assert ISO_TIMESTAMP.fullmatch(value), (name, value)


def test_unsupported_sdk_route_is_404(client: httpx.Client) -> None:
    # The SDK's audit.checkpoint() calls a route this server does not implement.
    response = client.post("/v1/audit/checkpoints", json={})
    assert_error(response, 404, "NOT_FOUND", "Route POST:/v1/audit/checkpoints not found")


def test_cross_site_consent_decision_rejected(client: httpx.Client) -> None:
    developer = signup(client, mode="live")
    headers = {"Authorization": f"Bearer {developer['apiKey']}"}
    agent = client.post("/v1/agents", json={"name": "a"}, headers=headers).json()
    request = client.post(
        "/v1/authorize", json={"agentId": agent["agentId"], "principalId": "p", "scopes": ["s"]}, headers=headers
    ).json()
    for action in ("approve", "deny"):
        response = client.post(
            f"/v1/consent/{request['authRequestId']}/{action}", headers={"Origin": "https://evil.example"}
        )
        assert_error(response, 403, "FORBIDDEN", "Consent decisions from origin 'https://evil.example' are not allowed")
    consent = client.get(f"/v1/consent/{request['authRequestId']}")
    assert consent.json()["status"] == "pending"
    same_origin = client.post(
        f"/v1/consent/{request['authRequestId']}/approve", headers={"Origin": str(client.base_url).rstrip("/")}
    )
    assert same_origin.status_code == 200
