"""Signing keys kept in PostgreSQL: rotation across instances, retirement, and the CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator

import httpx
import jwt
import pytest
from grantex import GrantexTokenError, VerifyGrantTokenOptions, verify_grant_token

from grantexd.crypto.keys import generate_signing_key, private_key_pem
from tests.support import REPOSITORY, Backends, Daemon, bearer, new_daemon, query, signup, stop_quietly


def run_keys_command(environ: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grantexd", "keys", *arguments],
        env=environ,
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=60,
    )


def issue_token(daemon: Daemon, api_key: str) -> str:
    with httpx.Client(base_url=daemon.base_url, headers=bearer(api_key), timeout=30) as client:
        agent = client.post("/v1/agents", json={"name": "key-test"}).json()
        request = client.post(
            "/v1/authorize", json={"agentId": agent["agentId"], "principalId": "user", "scopes": ["files:read"]}
        ).json()
        exchanged = client.post("/v1/token", json={"code": request["code"], "agentId": agent["agentId"]})
        assert exchanged.status_code == 201, exchanged.text
        token: str = exchanged.json()["grantToken"]
        return token


def verify_offline(daemon: Daemon, token: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Both instances sign as the first one's URL, as two replicas behind one name would.
        options = VerifyGrantTokenOptions(
            jwks_uri=f"{daemon.base_url}/.well-known/jwks.json", issuer=daemon.environ["JWT_ISSUER"]
        )
        verify_grant_token(token, options)


def verify_online(daemon: Daemon, api_key: str, token: str) -> bool:
    response = httpx.post(f"{daemon.base_url}/v1/tokens/verify", json={"token": token}, headers=bearer(api_key))
    valid: bool = response.json()["valid"]
    return valid


def published_kids(daemon: Daemon) -> list[str]:
    return [key["kid"] for key in httpx.get(f"{daemon.base_url}/.well-known/jwks.json").json()["keys"]]


def wait_until(condition, timeout_seconds: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached within the timeout")


@pytest.fixture
def key_encryption_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def two_instances(backends: Backends, database_url: str, key_encryption_key: str) -> Iterator[tuple[Daemon, Daemon]]:
    settings = {"KEY_ENCRYPTION_KEY": key_encryption_key, "KEYS_REFRESH_INTERVAL": "1", "AUTO_GENERATE_KEYS": "false"}
    first = new_daemon(backends, database_url, **settings)
    first.start()
    # Both instances must use one issuer, as they would behind one load balancer.
    second = new_daemon(backends, database_url, **settings, JWT_ISSUER=first.environ["JWT_ISSUER"])
    second.start()
    yield first, second
    stop_quietly(first)
    stop_quietly(second)


def test_rotation_keeps_old_tokens_valid(two_instances: tuple[Daemon, Daemon]) -> None:
    first, second = two_instances
    developer = signup(httpx.Client(base_url=first.base_url), mode="sandbox")
    api_key = developer["apiKey"]
    assert published_kids(first) == published_kids(second)
    old_kid = published_kids(first)[0]
    old_token = issue_token(first, api_key)

    result = run_keys_command(first.environ, "rotate", "--activate-in", "8s")
    assert result.returncode == 0, result.stderr
    new_kid = result.stdout.split()[2].rstrip(":")

    # Published on both instances before it signs anything.
    wait_until(lambda: new_kid in published_kids(second))
    assert old_kid in published_kids(second)
    assert jwt.get_unverified_header(issue_token(second, api_key))["kid"] == old_kid

    # Each instance switches on its next reload after the activation time.
    wait_until(lambda: jwt.get_unverified_header(issue_token(second, api_key))["kid"] == new_kid, 30)
    wait_until(lambda: jwt.get_unverified_header(issue_token(first, api_key))["kid"] == new_kid, 30)
    new_token = issue_token(first, api_key)

    # The old key stays published while a token it signed is live, so both verify everywhere.
    for daemon in (first, second):
        verify_offline(daemon, old_token)
        verify_offline(daemon, new_token)
        assert verify_online(daemon, api_key, old_token)
        assert verify_online(daemon, api_key, new_token)


def test_retired_key_leaves_jwks(two_instances: tuple[Daemon, Daemon]) -> None:
    first, second = two_instances
    developer = signup(httpx.Client(base_url=first.base_url), mode="sandbox")
    token = issue_token(first, developer["apiKey"])
    old_kid = published_kids(first)[0]

    refused = run_keys_command(first.environ, "retire", old_kid)
    assert refused.returncode == 1
    assert "is the active key" in refused.stderr

    assert run_keys_command(first.environ, "rotate", "--activate-in", "0s").returncode == 0
    wait_until(lambda: jwt.get_unverified_header(issue_token(second, developer["apiKey"]))["kid"] != old_kid)
    retired = run_keys_command(first.environ, "retire", old_kid)
    assert retired.returncode == 0, retired.stderr

    wait_until(lambda: old_kid not in published_kids(second))
    with pytest.raises(GrantexTokenError):
        verify_offline(second, token)
    assert not verify_online(second, developer["apiKey"], token)


def test_private_keys_stored_sealed(two_instances: tuple[Daemon, Daemon], database_url: str) -> None:
    rows = query(database_url, "SELECT private_key_sealed FROM signing_keys")
    assert rows
    for row in rows:
        assert b"PRIVATE KEY" not in bytes(row["private_key_sealed"])


def test_configured_key_is_imported(
    backends: Backends, database_url: str, key_encryption_key: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    key = generate_signing_key()
    key_file = tmp_path / "key.pem"
    key_file.write_text(private_key_pem(key))
    single = new_daemon(backends, database_url, RSA_PRIVATE_KEY=str(key_file), AUTO_GENERATE_KEYS="false")
    single.start()
    developer = signup(httpx.Client(base_url=single.base_url), mode="sandbox")
    token = issue_token(single, developer["apiKey"])
    stop_quietly(single)

    stored = new_daemon(
        backends,
        database_url,
        RSA_PRIVATE_KEY=str(key_file),
        KEY_ENCRYPTION_KEY=key_encryption_key,
        AUTO_GENERATE_KEYS="false",
        JWT_ISSUER=single.environ["JWT_ISSUER"],
    )
    stored.start()
    try:
        assert published_kids(stored) == [key.kid]
        assert verify_online(stored, developer["apiKey"], token)
    finally:
        stop_quietly(stored)


def test_wrong_key_encryption_key_fails_startup(backends: Backends, database_url: str, key_encryption_key: str) -> None:
    first = new_daemon(backends, database_url, KEY_ENCRYPTION_KEY=key_encryption_key, AUTO_GENERATE_KEYS="false")
    first.start()
    stop_quietly(first)
    wrong = new_daemon(
        backends,
        database_url,
        KEY_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
        AUTO_GENERATE_KEYS="false",
    )
    wrong.start(wait_ready=False)
    assert wrong.wait_exit(30) == 1
    assert "is not the key it was sealed with" in wrong.output()


def test_keys_command_needs_encryption_key(backends: Backends, database_url: str) -> None:
    daemon = new_daemon(backends, database_url)
    result = run_keys_command(daemon.environ, "list")
    assert result.returncode == 1
    assert "KEY_ENCRYPTION_KEY is not set" in result.stderr


def test_keys_list_and_generate(backends: Backends, database_url: str, key_encryption_key: str) -> None:
    daemon = new_daemon(backends, database_url, KEY_ENCRYPTION_KEY=key_encryption_key, AUTO_GENERATE_KEYS="false")
    listed_before = run_keys_command(daemon.environ, "list")
    assert listed_before.returncode == 0, listed_before.stderr
    assert listed_before.stdout.splitlines()[1:] == []

    generated = run_keys_command(daemon.environ, "generate")
    assert generated.returncode == 0, generated.stderr
    new_kid = generated.stdout.split()[2].rstrip(":")

    rows = run_keys_command(daemon.environ, "list").stdout.splitlines()[1:]
    states = {row.split()[0]: row.split()[1] for row in rows}
    # The empty set got its first key, then generate added one that signs at once.
    assert len(states) == 2
    assert states[new_kid] == "active"
    assert sorted(states.values()) == ["active", "superseded"]

    invalid = run_keys_command(daemon.environ, "rotate", "--activate-in", "soon")
    assert invalid.returncode == 2
    assert "invalid --activate-in 'soon'" in invalid.stderr
