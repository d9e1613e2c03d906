"""Configuration: ``load_config`` on its own, and the real process exiting on bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from grantexd.config import ConfigError, load_config
from grantexd.crypto.keys import generate_signing_key, private_key_pem
from grantexd.dev import free_port
from tests.support import REPOSITORY, daemon_environment

# Loopback addresses where nothing listens. These tests fail before any connection is made.
UNUSED_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/grantex"
UNUSED_REDIS_URL = "redis://127.0.0.1:1/0"
DATABASE_PASSWORD = "db-password-9f3c1e"
MALFORMED_PEM = "-----BEGIN PRIVATE KEY-----\\nbm90IGEga2V5IGF0IGFsbA==\\n-----END PRIVATE KEY-----"


def base_environ(**overrides: str) -> dict[str, str]:
    environ = {
        "DATABASE_URL": "postgresql://grantex:secret@127.0.0.1:5432/grantex",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "AUTO_GENERATE_KEYS": "true",
    }
    environ.update(overrides)
    return environ


def problems_for(environ: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        load_config(environ)
    return raised.value.problems


def run_grantexd(environ: dict[str, str], command: str = "serve") -> tuple[int, list[dict[str, Any]]]:
    """Run ``python -m grantexd COMMAND`` to completion and return its status and parsed stdout lines."""
    completed = subprocess.run(
        [sys.executable, "-m", "grantexd", command],
        env=environ,
        cwd=REPOSITORY,
        capture_output=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in completed.stdout.decode().splitlines() if line.strip()]
    return completed.returncode, lines


def process_environ(**overrides: str) -> dict[str, str]:
    environ = daemon_environment(UNUSED_DATABASE_URL, UNUSED_REDIS_URL, free_port())
    for name, value in overrides.items():
        if value == "":
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


def fatal_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("level") == "fatal"]


# load_config


def test_config_defaults() -> None:
    config = load_config(base_environ())

    assert config.port == 3001
    assert config.host == "0.0.0.0"
    assert config.max_delegation_depth == 3
    assert config.trust_proxy.enabled is False
    assert config.jwt_issuer == "https://grantex.dev"
    assert config.public_base_url == "https://grantex.dev"
    assert config.health_timeout_seconds == 2.0
    assert config.shutdown_grace_seconds == 30.0
    assert config.db_pool_max == 10
    assert config.environment == "development"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_DELEGATION_DEPTH", "11", "from 1 to 10, got 11"),
        ("MAX_DELEGATION_DEPTH", "0", "from 1 to 10, got 0"),
        ("TRUST_PROXY", "true", "hop count or a comma-separated list of CIDR networks"),
        ("TRUST_PROXY", "10.0.0.0/8,not-a-network", "'not-a-network'"),
        ("PORT", "abc", "whole number from 0 to 65535, got 'abc'"),
        ("PORT", "70000", "from 0 to 65535, got 70000"),
        ("LOG_LEVEL", "verbose", "debug, info, warn or error"),
        ("GRANTEX_ENV", "staging", "development or production"),
        ("JWT_ISSUER", "grantex.dev", "absolute http or https URL"),
        ("JWT_ISSUER", "http://[::1", "not a valid URL"),
        ("CORS_ALLOWED_ORIGINS", "https://app.example/path", "no path"),
        ("HEALTH_TIMEOUT", "soon", "number of seconds"),
        ("DB_POOL_MIN", "20", "must not exceed DB_POOL_MAX"),
        ("METRICS_API_KEY", "short", "at least 16 characters"),
        ("RSA_PRIVATE_KEY", MALFORMED_PEM, "not a readable unencrypted PEM private key"),
        ("RSA_PRIVATE_KEY", "/nonexistent/signing-key.pem", "path of a readable PEM file"),
        ("ED25519_PRIVATE_KEY", MALFORMED_PEM, "PEM Ed25519 private key"),
    ],
)
def test_config_invalid_value(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        load_config(base_environ(**{name: value}))

    assert list(raised.value.problems) == [name]
    assert message in raised.value.problems[name]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "mysql://grantex@127.0.0.1/grantex", "postgresql://"),
        ("DATABASE_URL", "postgresql://grantex@127.0.0.1:notaport/grantex", "invalid port"),
        ("DATABASE_URL", "postgresql://grantex@[::1/grantex", "not a valid URL"),
        ("DATABASE_URL", "postgresql://grantex@127.0.0.1/grantex?sslmode=requre", "'requre'"),
        ("REDIS_URL", "http://127.0.0.1:6379", "redis://"),
        ("REDIS_URL", "redis://127.0.0.1:99999/0", "invalid port"),
    ],
)
def test_config_invalid_url(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        load_config(base_environ(**{name: value}))

    assert list(raised.value.problems) == [name]
    assert message in raised.value.problems[name]


def test_config_missing_required() -> None:
    problems = problems_for({})

    assert set(problems) == {"DATABASE_URL", "REDIS_URL", "RSA_PRIVATE_KEY"}


def test_config_auto_generate_keys_not_boolean() -> None:
    problems = problems_for(base_environ(AUTO_GENERATE_KEYS="maybe"))

    assert "true or false" in problems["AUTO_GENERATE_KEYS"]
    assert "RSA_PRIVATE_KEY" in problems


def test_config_auto_generate_keys_refused_in_production() -> None:
    problems = problems_for(base_environ(GRANTEX_ENV="production"))

    assert list(problems) == ["AUTO_GENERATE_KEYS"]


def test_config_seed_keys_refused_in_production() -> None:
    pem = private_key_pem(generate_signing_key())
    environ = base_environ(
        GRANTEX_ENV="production", AUTO_GENERATE_KEYS="", RSA_PRIVATE_KEY=pem, SEED_API_KEY="gx_live_" + "a" * 24
    )

    assert list(problems_for(environ)) == ["SEED_API_KEY"]


def test_config_small_rsa_key_rejected() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()

    problems = problems_for(base_environ(RSA_PRIVATE_KEY=pem))

    assert "at least 2048 bits" in problems["RSA_PRIVATE_KEY"]


def test_config_rsa_key_forms(tmp_path: Path) -> None:
    pem = private_key_pem(generate_signing_key())
    key_file = tmp_path / "signing-key.pem"
    key_file.write_text(pem)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "rsa_private_key").write_text(pem)
    escaped = pem.replace("\n", "\\n")

    from_escaped = load_config(base_environ(AUTO_GENERATE_KEYS="", RSA_PRIVATE_KEY=escaped))
    from_file = load_config(base_environ(AUTO_GENERATE_KEYS="", RSA_PRIVATE_KEY=str(key_file)))
    from_credential = load_config(base_environ(AUTO_GENERATE_KEYS="", CREDENTIALS_DIRECTORY=str(credentials)))

    assert from_escaped.rsa_private_key_pem is not None
    assert from_escaped.rsa_private_key_pem.reveal() == pem
    assert from_file.rsa_private_key_pem is not None
    assert from_file.rsa_private_key_pem.reveal() == pem
    assert from_credential.rsa_private_key_pem is not None
    assert from_credential.rsa_private_key_pem.reveal() == pem


def test_config_ed25519_key_accepted() -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )

    config = load_config(base_environ(ED25519_PRIVATE_KEY=pem))

    assert config.ed25519_private_key_pem is not None


def test_config_trust_proxy_forms() -> None:
    hops = load_config(base_environ(TRUST_PROXY="2")).trust_proxy
    networks = load_config(base_environ(TRUST_PROXY="10.0.0.0/8, 127.0.0.1")).trust_proxy

    assert hops.hops == 2
    assert [str(network) for network in networks.networks] == ["10.0.0.0/8", "127.0.0.1/32"]


def test_config_database_url_forms() -> None:
    for url in (
        "postgresql://grantex:pw@db1:5432,db2:5433/grantex",
        "postgresql://grantex@[::1]:5432/grantex?sslmode=verify-full",
        "postgres:///grantex?host=/run/postgresql",
    ):
        assert load_config(base_environ(DATABASE_URL=url)).database_url.reveal() == url


def test_config_secrets_hidden() -> None:
    environ = base_environ(
        DATABASE_URL=f"postgresql://grantex:{DATABASE_PASSWORD}@127.0.0.1:5432/grantex",
        REDIS_URL="redis://:redis-password-77aa@127.0.0.1:6379/0",
        SEED_API_KEY="gx_live_seed-key-0123456789",
    )

    config_repr = repr(load_config(environ))

    assert DATABASE_PASSWORD not in config_repr
    assert "redis-password-77aa" not in config_repr
    assert "seed-key-0123456789" not in config_repr


def test_config_error_hides_database_password() -> None:
    environ = base_environ(DATABASE_URL=f"postgresql://grantex:{DATABASE_PASSWORD}@127.0.0.1:notaport/grantex")

    with pytest.raises(ConfigError) as raised:
        load_config(environ)

    assert DATABASE_PASSWORD not in str(raised.value)
    assert "DATABASE_URL" in raised.value.problems


# The process


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL", "RSA_PRIVATE_KEY"])
def test_serve_missing_required_variable(name: str) -> None:
    environ = process_environ(**{name: "", "AUTO_GENERATE_KEYS": ""})
    if name != "RSA_PRIVATE_KEY":
        environ["RSA_PRIVATE_KEY"] = private_key_pem(generate_signing_key())

    status, lines = run_grantexd(environ)

    assert status == 1
    fatal = fatal_lines(lines)
    assert len(fatal) == 1
    assert fatal[0]["msg"] == "config.invalid"
    assert list(fatal[0]["errors"]) == [name]
    assert name in fatal[0]["message"]


def test_serve_names_every_bad_variable() -> None:
    environ = process_environ(
        DATABASE_URL="",
        REDIS_URL="http://127.0.0.1:6379",
        PORT="abc",
        MAX_DELEGATION_DEPTH="11",
        TRUST_PROXY="true",
        RSA_PRIVATE_KEY=MALFORMED_PEM,
    )

    status, lines = run_grantexd(environ)

    assert status == 1
    fatal = fatal_lines(lines)
    assert len(fatal) == 1
    assert set(fatal[0]["errors"]) == {
        "DATABASE_URL",
        "REDIS_URL",
        "PORT",
        "MAX_DELEGATION_DEPTH",
        "TRUST_PROXY",
        "RSA_PRIVATE_KEY",
    }


def test_serve_fatal_line_hides_secrets() -> None:
    environ = process_environ(
        DATABASE_URL=f"postgresql://grantex:{DATABASE_PASSWORD}@127.0.0.1:notaport/grantex",
        REDIS_URL="redis://:redis-password-77aa@127.0.0.1:1/0",
        TRUST_PROXY="true",
        RSA_PRIVATE_KEY=MALFORMED_PEM,
    )

    completed = subprocess.run(
        [sys.executable, "-m", "grantexd", "serve"], env=environ, cwd=REPOSITORY, capture_output=True, timeout=60
    )
    output = completed.stdout.decode() + completed.stderr.decode()

    assert completed.returncode == 1
    assert '"config.invalid"' in output
    assert "DATABASE_URL" in output
    assert DATABASE_PASSWORD not in output
    assert "redis-password-77aa" not in output
    assert "bm90IGEga2V5IGF0IGFsbA" not in output


def test_serve_auto_generate_keys_in_production() -> None:
    status, lines = run_grantexd(process_environ(GRANTEX_ENV="production", AUTO_GENERATE_KEYS="true"))

    assert status == 1
    fatal = fatal_lines(lines)
    assert len(fatal) == 1
    assert "AUTO_GENERATE_KEYS" in fatal[0]["errors"]


def test_serve_malformed_rsa_key() -> None:
    status, lines = run_grantexd(process_environ(AUTO_GENERATE_KEYS="", RSA_PRIVATE_KEY=MALFORMED_PEM))

    assert status == 1
    fatal = fatal_lines(lines)
    assert len(fatal) == 1
    assert list(fatal[0]["errors"]) == ["RSA_PRIVATE_KEY"]
