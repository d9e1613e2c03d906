"""Metrics, and rate limits shared across instances through Redis."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from grantexd.config import TrustProxy, load_config
from grantexd.dev import EmbeddedRedis
from grantexd.services.ratelimit import client_ip
from tests.support import Backends, Daemon, bearer, new_daemon, signup, stop_quietly

LIMITS_ON = {
    "RATE_LIMIT_IP_PER_MINUTE": "5000",
    "RATE_LIMIT_DEVELOPER_PER_MINUTE": "2000",
    "RATE_LIMIT_AUTHORIZE_PER_MINUTE": "60",
    "TRUST_PROXY": "1",
}


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Return one sample's value from Prometheus text, or None when the series is absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if labels is None or all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return None


@pytest.fixture
def limited_daemon(backends: Backends, database_url: str) -> Iterator[Daemon]:
    daemon = new_daemon(backends, database_url, **LIMITS_ON, METRICS_API_KEY="metrics-secret-0123456789")
    daemon.start()
    yield daemon
    stop_quietly(daemon)


def scripted_flow(daemon: Daemon, client_address: str) -> dict[str, str]:
    headers = {"X-Forwarded-For": client_address}
    with httpx.Client(base_url=daemon.base_url, headers=headers, timeout=30) as client:
        developer = signup(client, mode="sandbox")
        auth = bearer(developer["apiKey"])
        agent = client.post("/v1/agents", json={"name": "m"}, headers=auth).json()
        request = client.post(
            "/v1/authorize", json={"agentId": agent["agentId"], "principalId": "p", "scopes": ["a"]}, headers=auth
        ).json()
        token = client.post("/v1/token", json={"code": request["code"], "agentId": agent["agentId"]}, headers=auth)
        assert token.status_code == 201
        bad = client.post("/v1/token", json={"code": request["code"], "agentId": agent["agentId"]}, headers=auth)
        assert bad.status_code == 400
        verified = client.post("/v1/tokens/verify", json={"token": token.json()["grantToken"]}, headers=auth)
        assert verified.json()["valid"] is True
        client.post("/v1/tokens/verify", json={"token": "garbage"}, headers=auth)
        assert client.delete(f"/v1/grants/{token.json()['grantId']}", headers=auth).status_code == 204
        client.get(f"/v1/no-such-route/{uuid.uuid4()}")
    return developer


def test_metrics_after_flow(limited_daemon: Daemon) -> None:
    scripted_flow(limited_daemon, "203.0.113.10")
    unauthorized = httpx.get(f"{limited_daemon.base_url}/metrics")
    assert unauthorized.status_code == 401
    response = httpx.get(f"{limited_daemon.base_url}/metrics", headers=bearer("metrics-secret-0123456789"))
    assert response.status_code == 200
    text = response.text

    assert metric_value(text, "grantexd_token_operations_total", {"operation": "exchange", "outcome": "success"}) == 1
    assert metric_value(text, "grantexd_token_operations_total", {"operation": "exchange", "outcome": "failure"}) == 1
    assert metric_value(text, "grantexd_token_operations_total", {"operation": "verify", "outcome": "valid"}) == 1
    assert metric_value(text, "grantexd_token_operations_total", {"operation": "verify", "outcome": "invalid"}) == 1
    assert metric_value(text, "grantexd_authorizations_total", {"outcome": "approved"}) == 1
    assert metric_value(text, "grantexd_grants_revoked_total") == 1
    assert metric_value(
        text, "grantexd_http_requests_total", {"method": "POST", "route": "/v1/agents", "status_class": "2xx"}
    ) == 1
    assert metric_value(
        text, "grantexd_http_request_duration_seconds_count", {"method": "POST", "route": "/v1/token"}
    ) == 2
    assert metric_value(text, "grantexd_http_requests_total", {"route": "unmatched", "status_class": "4xx"}) == 1
    assert "no-such-route" not in text
    assert metric_value(text, "grantexd_db_pool_connections", {"state": "open"}) is not None
    assert metric_value(text, "grantexd_redis_up") == 1
    assert metric_value(text, "grantexd_build_info") == 1
    assert metric_value(text, "process_resident_memory_bytes") is not None


def test_rate_limit_headers(limited_daemon: Daemon) -> None:
    developer = scripted_flow(limited_daemon, "203.0.113.11")
    response = httpx.get(
        f"{limited_daemon.base_url}/v1/agents",
        headers={**bearer(developer["apiKey"]), "X-Forwarded-For": "203.0.113.11"},
    )
    assert response.headers["X-RateLimit-Limit"] == "2000"
    assert 0 <= int(response.headers["X-RateLimit-Remaining"]) < 2000
    assert 1 <= int(response.headers["X-RateLimit-Reset"]) <= 60
    for path in ("/health", "/health/live", "/.well-known/jwks.json"):
        exempt = httpx.get(f"{limited_daemon.base_url}{path}")
        assert "X-RateLimit-Limit" not in exempt.headers, path


def test_ip_limit_shared_across_instances(backends: Backends, database_url: str) -> None:
    settings = {**LIMITS_ON, "RATE_LIMIT_IP_PER_MINUTE": "10"}
    first = new_daemon(backends, database_url, **settings)
    second = new_daemon(backends, database_url, **settings)
    first.start()
    second.start()
    try:
        address = f"198.51.100.{uuid.uuid4().int % 250}"
        statuses = []
        for index in range(16):
            daemon = first if index % 2 == 0 else second
            statuses.append(httpx.get(f"{daemon.base_url}/v1/agents", headers={"X-Forwarded-For": address}).status_code)
        assert statuses.count(401) == 10
        assert statuses.count(429) == 6
        limited = httpx.get(f"{second.base_url}/v1/agents", headers={"X-Forwarded-For": address})
        assert limited.status_code == 429
        body = limited.json()
        assert body["code"] == "RATE_LIMIT_EXCEEDED"
        assert re.search(r"retry in \d+ seconds", body["message"])
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        other = httpx.get(f"{second.base_url}/v1/agents", headers={"X-Forwarded-For": "192.0.2.1"})
        assert other.status_code == 401
    finally:
        stop_quietly(first)
        stop_quietly(second)


def test_authorize_limit_per_developer(backends: Backends, database_url: str) -> None:
    daemon = new_daemon(backends, database_url, **{**LIMITS_ON, "RATE_LIMIT_AUTHORIZE_PER_MINUTE": "3"})
    daemon.start()
    try:
        with httpx.Client(base_url=daemon.base_url, headers={"X-Forwarded-For": "203.0.113.20"}) as client:
            developer = signup(client)
            auth = bearer(developer["apiKey"])
            agent = client.post("/v1/agents", json={"name": "a"}, headers=auth).json()
            body = {"agentId": agent["agentId"], "principalId": "p", "scopes": ["s"]}
            statuses = [client.post("/v1/authorize", json=body, headers=auth).status_code for _ in range(5)]
            assert statuses == [201, 201, 201, 429, 429]
            limited = client.post("/v1/authorize", json=body, headers=auth)
            assert limited.json()["code"] == "RATE_LIMITED"
            assert limited.headers["X-RateLimit-Limit"] == "3"
            # Other routes of the same developer are not held back by the authorize limit.
            assert client.get("/v1/agents", headers=auth).status_code == 200
    finally:
        stop_quietly(daemon)


def test_redis_outage_fails_open(backends: Backends, database_url: str, tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis", persistent=False)
    redis.start()
    daemon = new_daemon(backends, database_url, redis_url=redis.url(), **{**LIMITS_ON, "RATE_LIMIT_IP_PER_MINUTE": "8"})
    daemon.start()
    try:
        with httpx.Client(base_url=daemon.base_url, headers={"X-Forwarded-For": "203.0.113.30"}) as client:
            assert [client.get("/v1/agents").status_code for _ in range(9)][-1] == 429
            redis.stop()
            during = [client.get("/v1/agents").status_code for _ in range(20)]
            assert set(during) == {401}
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json()["failing"] == ["redis"]

            redis = EmbeddedRedis(tmp_path / "redis", port=redis.port, persistent=False)
            redis.start()
            # The client retries Redis after a backoff of at most 2 s; limiting resumes then.
            statuses: list[int] = []
            deadline = time.monotonic() + 15
            while 429 not in statuses and time.monotonic() < deadline:
                statuses.append(client.get("/v1/agents", headers={"X-Forwarded-For": "203.0.113.31"}).status_code)
                time.sleep(0.05)
            assert 429 in statuses
            assert client.get("/health").status_code == 200
        warnings = [line for line in daemon.json_lines() if line.get("msg") == "redis.unavailable"]
        assert len(warnings) == 1
    finally:
        stop_quietly(daemon)
        redis.stop()


@pytest.mark.parametrize(
    ("setting", "peer", "forwarded", "expected"),
    [
        ("", "10.0.0.5", "1.2.3.4", "10.0.0.5"),
        ("1", "10.0.0.5", "1.2.3.4", "1.2.3.4"),
        ("1", "10.0.0.5", "9.9.9.9, 1.2.3.4", "1.2.3.4"),
        ("2", "10.0.0.5", "9.9.9.9, 1.2.3.4", "9.9.9.9"),
        ("10.0.0.0/8", "10.0.0.5", "9.9.9.9, 10.1.1.1", "9.9.9.9"),
        ("10.0.0.0/8", "192.0.2.7", "9.9.9.9", "192.0.2.7"),
    ],
)
def test_client_ip_honours_trust_proxy(setting: str, peer: str, forwarded: str, expected: str) -> None:
    environ = {"DATABASE_URL": "postgresql://h/d", "REDIS_URL": "redis://h", "AUTO_GENERATE_KEYS": "true"}
    trust = load_config({**environ, "TRUST_PROXY": setting}).trust_proxy if setting else TrustProxy()
    assert client_ip(peer, forwarded, trust) == expected
