"""Developer accounts over HTTP: signup, /v1/me, key rotation and API-key authentication."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
import trio

from tests.protocol_support import ISO_TIMESTAMP, ULID, assert_error, new_developer
from tests.support import Daemon, bearer

NAME_MESSAGE = "name must be 1 to 200 characters"
MODE_MESSAGE = "mode must be live or sandbox"
EMAIL_MESSAGE = "email must be a valid address"
MISSING_HEADER = "Missing or invalid Authorization header"
INVALID_KEY = "Invalid API key"


def unique_email(local: str = "dev") -> str:
    return f"{local}-{uuid.uuid4().hex[:12]}@example.com"


def test_signup_live_response(client: httpx.Client) -> None:
    email = unique_email()
    response = client.post("/v1/signup", json={"name": "  Acme Corp  ", "email": f"  {email.upper()} "})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert list(body) == ["developerId", "apiKey", "name", "email", "mode", "createdAt"]
    assert re.fullmatch(f"dev_{ULID}", body["developerId"])
    assert body["apiKey"].startswith("gx_live_")
    assert len(body["apiKey"]) == 51
    assert body["name"] == "Acme Corp"
    assert body["email"] == email
    assert body["mode"] == "live"
    assert ISO_TIMESTAMP.match(body["createdAt"])


def test_signup_sandbox_key_prefix(client: httpx.Client) -> None:
    response = client.post("/v1/signup", json={"name": "Sandbox", "mode": "sandbox"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["apiKey"].startswith("gx_test_")
    assert len(body["apiKey"]) == 51
    assert body["mode"] == "sandbox"
    assert body["email"] is None


def test_signup_name_at_limit(client: httpx.Client) -> None:
    response = client.post("/v1/signup", json={"name": "n" * 200})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "n" * 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, NAME_MESSAGE),
        ({"name": ""}, NAME_MESSAGE),
        ({"name": "   "}, NAME_MESSAGE),
        ({"name": 5}, NAME_MESSAGE),
        ({"name": None}, NAME_MESSAGE),
        ({"name": "n" * 201}, NAME_MESSAGE),
        # The 200 limit applies to the raw text, before trimming.
        ({"name": " " * 199 + "ab"}, NAME_MESSAGE),
        ({"name": "", "mode": "bogus", "email": "bad"}, NAME_MESSAGE),
        ({"name": "x", "mode": "test"}, MODE_MESSAGE),
        ({"name": "x", "mode": "LIVE"}, MODE_MESSAGE),
        ({"name": "x", "mode": 1}, MODE_MESSAGE),
        ({"name": "x", "mode": "bogus", "email": "bad"}, MODE_MESSAGE),
        ({"name": "x", "email": "bad"}, EMAIL_MESSAGE),
        ({"name": "x", "email": ""}, EMAIL_MESSAGE),
        ({"name": "x", "email": "   "}, EMAIL_MESSAGE),
        ({"name": "x", "email": "a b@example.com"}, EMAIL_MESSAGE),
        ({"name": "x", "email": "a@b@example.com"}, EMAIL_MESSAGE),
        ({"name": "x", "email": "a@example"}, EMAIL_MESSAGE),
        ({"name": "x", "email": 5}, EMAIL_MESSAGE),
        ({"name": "x", "email": "a" * 243 + "@example.com"}, EMAIL_MESSAGE),
    ],
)
def test_signup_validation(client: httpx.Client, body: dict[str, object], message: str) -> None:
    assert_error(client.post("/v1/signup", json=body), 400, "BAD_REQUEST", message)


def test_signup_non_object_body(client: httpx.Client) -> None:
    assert_error(client.post("/v1/signup", json=["name"]), 400, "BAD_REQUEST", NAME_MESSAGE)


def test_signup_duplicate_email_case_insensitive(client: httpx.Client) -> None:
    email = unique_email("Dup")
    first = client.post("/v1/signup", json={"name": "First", "email": email})
    assert first.status_code == 201, first.text

    again = client.post("/v1/signup", json={"name": "Second", "email": "  " + email.upper() + " "})
    assert_error(again, 409, "CONFLICT", "A developer with this email already exists")


async def test_signup_duplicate_email_concurrent(daemon: Daemon) -> None:
    email = unique_email("race")
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as http:

        async def sign_up(index: int) -> None:
            response = await http.post("/v1/signup", json={"name": f"Racer {index}", "email": email})
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(sign_up, index)

    assert sorted(statuses) == [201] + [409] * 9


def test_me_profile(client: httpx.Client) -> None:
    email = unique_email()
    signup = client.post("/v1/signup", json={"name": "Profile", "email": email, "mode": "sandbox"}).json()
    response = client.get("/v1/me", headers=bearer(signup["apiKey"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["developerId"] == signup["developerId"]
    assert body["name"] == "Profile"
    assert body["email"] == email
    assert body["mode"] == "sandbox"
    assert body["plan"] == "free"
    assert body["fidoRequired"] is False
    assert body["fidoRpName"] is None
    assert body["createdAt"] == signup["createdAt"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "No fields to update"),
        ({"other": True}, "No fields to update"),
        ({"fidoRequired": "yes"}, "fidoRequired must be a boolean"),
        ({"fidoRequired": 1}, "fidoRequired must be a boolean"),
        ({"fidoRequired": None}, "fidoRequired must be a boolean"),
        ({"fidoRpName": ""}, "fidoRpName must be 1 to 100 characters"),
        ({"fidoRpName": "   "}, "fidoRpName must be 1 to 100 characters"),
        ({"fidoRpName": "r" * 101}, "fidoRpName must be 1 to 100 characters"),
        ({"fidoRpName": 5}, "fidoRpName must be 1 to 100 characters"),
    ],
)
def test_me_patch_validation(client: httpx.Client, body: dict[str, object], message: str) -> None:
    developer = new_developer(client)
    assert_error(client.patch("/v1/me", json=body, headers=developer.headers), 400, "BAD_REQUEST", message)


def test_me_patch_without_body(client: httpx.Client) -> None:
    developer = new_developer(client)
    assert_error(client.patch("/v1/me", headers=developer.headers), 400, "BAD_REQUEST", "No fields to update")


def test_me_patch_updates_settings(client: httpx.Client) -> None:
    developer = new_developer(client)
    response = client.patch("/v1/me", json={"fidoRpName": "  Acme  "}, headers=developer.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"updated": True}

    me = client.get("/v1/me", headers=developer.headers).json()
    assert me["fidoRpName"] == "Acme"
    assert me["fidoRequired"] is False


def test_rotate_key_replaces_old(client: httpx.Client) -> None:
    developer = new_developer(client, mode="live")
    response = client.post("/v1/keys/rotate", headers=developer.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["apiKey", "rotatedAt"]
    assert body["apiKey"].startswith("gx_live_")
    assert len(body["apiKey"]) == 51
    assert body["apiKey"] != developer.api_key
    assert ISO_TIMESTAMP.match(body["rotatedAt"])

    assert_error(client.get("/v1/me", headers=developer.headers), 401, "UNAUTHORIZED", INVALID_KEY)
    me = client.get("/v1/me", headers=bearer(body["apiKey"]))
    assert me.status_code == 200
    assert me.json()["developerId"] == developer.id


def test_rotate_key_keeps_sandbox_prefix(client: httpx.Client) -> None:
    developer = new_developer(client, mode="sandbox")
    body = client.post("/v1/keys/rotate", headers=developer.headers).json()
    assert body["apiKey"].startswith("gx_test_")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Token gx_live_aaaaaaaaaaaaaaaaaaaa",
        "Bearer gx_live_aaaaaaaaaaaaaaaaaaaa extra",
        "Bearergx_live_aaaaaaaaaaaaaaaaaaaa",
    ],
)
def test_auth_malformed_header(client: httpx.Client, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert_error(client.get("/v1/agents", headers=headers), 401, "UNAUTHORIZED", MISSING_HEADER)


@pytest.mark.parametrize("key", ["k" * 15, "k" * 513, "gx_live_" + "0" * 43, "k" * 16, "k" * 512])
def test_auth_invalid_key(client: httpx.Client, key: str) -> None:
    assert_error(client.get("/v1/agents", headers=bearer(key)), 401, "UNAUTHORIZED", INVALID_KEY)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer\t", "Bearer   "])
def test_auth_scheme_variants(client: httpx.Client, scheme: str) -> None:
    developer = new_developer(client)
    separator = "" if scheme[-1] in " \t" else " "
    response = client.get("/v1/me", headers={"Authorization": f"{scheme}{separator}{developer.api_key}"})
    assert response.status_code == 200, response.text
    assert response.json()["developerId"] == developer.id


def test_auth_seeded_keys(client: httpx.Client, seeded_keys: dict[str, str]) -> None:
    live = client.get("/v1/me", headers=bearer(seeded_keys["live"]))
    assert live.status_code == 200, live.text
    assert live.json()["mode"] == "live"
    sandbox = client.get("/v1/me", headers=bearer(seeded_keys["sandbox"]))
    assert sandbox.status_code == 200, sandbox.text
    assert sandbox.json()["mode"] == "sandbox"


def test_signup_needs_no_key(daemon: Daemon) -> None:
    # A bad key on a public route is ignored, not rejected.
    with httpx.Client(base_url=daemon.base_url, headers={"Authorization": "Bearer nonsense"}) as http:
        response = http.post("/v1/signup", json={"name": "Public"})
    assert response.status_code == 201, response.text
