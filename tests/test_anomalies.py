"""Anomaly detection: the rules, the API, the SDK, and the worker's periodic scan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import pytest
from grantex import Grantex

from tests.support import Backends, Daemon, bearer, new_daemon, query, signup, stop_quietly


def issue_tokens(client: httpx.Client, api_key: str, agent_id: str, principals: list[str]) -> None:
    for principal in principals:
        request = client.post(
            "/v1/authorize", json={"agentId": agent_id, "principalId": principal, "scopes": ["files:read"]},
            headers=bearer(api_key),
        ).json()
        response = client.post("/v1/token", json={"code": request["code"], "agentId": agent_id}, headers=bearer(api_key))
        assert response.status_code == 201, response.text


def log_failures(client: httpx.Client, api_key: str, agent: dict[str, str], count: int) -> None:
    for index in range(count):
        response = client.post(
            "/v1/audit/log",
            json={
                "agentId": agent["agentId"],
                "agentDid": agent["did"],
                "grantId": "grnt_unknown",
                "principalId": f"user-{index}",
                "action": "payment.initiated",
                "status": "failure",
            },
            headers=bearer(api_key),
        )
        assert response.status_code == 201, response.text


@pytest.fixture
def anomaly_daemon(backends: Backends, database_url: str) -> Iterator[Daemon]:
    hour = datetime.now(timezone.utc).hour
    # Off hours cover the current hour, so tokens issued by the test count as off-hours activity.
    daemon = new_daemon(backends, database_url, ANOMALY_OFF_HOURS=f"{hour}-{(hour + 1) % 24}")
    daemon.start()
    yield daemon
    stop_quietly(daemon)


def test_detect_records_each_rule(anomaly_daemon: Daemon) -> None:
    with httpx.Client(base_url=anomaly_daemon.base_url, timeout=30) as client:
        developer = signup(client, mode="sandbox")
        api_key = developer["apiKey"]
        agent = client.post("/v1/agents", json={"name": "busy"}, headers=bearer(api_key)).json()
        issue_tokens(client, api_key, agent["agentId"], ["early-user"])
        database_url = anomaly_daemon.environ["DATABASE_URL"]
        query(database_url, "UPDATE grants SET issued_at = now() - interval '3 hours' WHERE agent_id = $1", agent["agentId"])
        issue_tokens(client, api_key, agent["agentId"], [f"user-{index}" for index in range(24)])
        log_failures(client, api_key, agent, 12)

        response = client.post("/v1/anomalies/detect", headers=bearer(api_key))
        assert response.status_code == 200, response.text
        body = response.json()
        found = {anomaly["type"]: anomaly for anomaly in body["anomalies"]}
        assert set(found) == {"rate_spike", "high_failure_rate", "off_hours_activity", "new_principal"}
        assert body["total"] == 4
        assert found["rate_spike"]["metadata"]["tokens"] == 25
        assert found["rate_spike"]["severity"] == "high"
        assert found["high_failure_rate"]["severity"] == "high"
        assert found["high_failure_rate"]["metadata"] == {"failures": 12, "entries": 12}
        assert found["new_principal"]["metadata"] == {"newPrincipals": 24}
        assert found["off_hours_activity"]["severity"] == "low"
        for anomaly in found.values():
            assert anomaly["agentId"] == agent["agentId"]
            assert anomaly["id"].startswith("anm_")
            assert anomaly["acknowledgedAt"] is None

        again = client.post("/v1/anomalies/detect", headers=bearer(api_key)).json()
        assert again["total"] == 0
        listed = client.get("/v1/anomalies", headers=bearer(api_key)).json()
        assert listed["total"] == 4


def test_quiet_agent_has_no_anomalies(anomaly_daemon: Daemon) -> None:
    with httpx.Client(base_url=anomaly_daemon.base_url, timeout=30) as client:
        developer = signup(client, mode="sandbox")
        agent = client.post("/v1/agents", json={"name": "quiet"}, headers=bearer(developer["apiKey"])).json()
        issue_tokens(client, developer["apiKey"], agent["agentId"], ["one", "two"])
        log_failures(client, developer["apiKey"], agent, 3)
        body = client.post("/v1/anomalies/detect", headers=bearer(developer["apiKey"])).json()
        assert body == {"detectedAt": body["detectedAt"], "total": 0, "anomalies": []}


def test_acknowledge_with_sdk(anomaly_daemon: Daemon) -> None:
    with httpx.Client(base_url=anomaly_daemon.base_url, timeout=30) as client:
        developer = signup(client, mode="sandbox")
        other = signup(client, mode="sandbox")
        agent = client.post("/v1/agents", json={"name": "failing"}, headers=bearer(developer["apiKey"])).json()
        log_failures(client, developer["apiKey"], agent, 10)

    sdk = Grantex(api_key=developer["apiKey"], base_url=anomaly_daemon.base_url)
    detected = sdk.anomalies.detect()
    assert detected.total == 1
    anomaly = detected.anomalies[0]
    assert anomaly.type == "high_failure_rate"

    acknowledged = sdk.anomalies.acknowledge(anomaly.id)
    assert acknowledged.acknowledged_at is not None
    assert sdk.anomalies.list(unacknowledged=True).total == 0
    assert sdk.anomalies.list().total == 1

    stranger = httpx.patch(
        f"{anomaly_daemon.base_url}/v1/anomalies/{anomaly.id}/acknowledge", json={}, headers=bearer(other["apiKey"])
    )
    assert stranger.status_code == 404
    assert stranger.json()["message"] == "Anomaly not found"
    bad_flag = httpx.get(
        f"{anomaly_daemon.base_url}/v1/anomalies?unacknowledged=maybe", headers=bearer(developer["apiKey"])
    )
    assert bad_flag.status_code == 400


def test_worker_scans_at_startup(backends: Backends, database_url: str) -> None:
    first = new_daemon(backends, database_url)
    first.start()
    with httpx.Client(base_url=first.base_url, timeout=30) as client:
        developer = signup(client, mode="sandbox")
        agent = client.post("/v1/agents", json={"name": "worker"}, headers=bearer(developer["apiKey"])).json()
        log_failures(client, developer["apiKey"], agent, 10)
    stop_quietly(first)

    # The restarted daemon scans once at startup, before it reports ready.
    second = new_daemon(backends, database_url, ANOMALY_INTERVAL="1h")
    second.start()
    try:
        rows = query(database_url, "SELECT type, agent_id FROM anomalies")
        assert rows == [{"type": "high_failure_rate", "agent_id": agent["agentId"]}]
        lines = [line for line in second.json_lines() if line.get("worker") == "anomaly-detection"]
        assert any(line["msg"] == "worker.iteration.done" and line["anomalies"] == 1 for line in lines)
        metrics = httpx.get(f"{second.base_url}/metrics").text
        assert 'grantexd_anomalies_detected_total{type="high_failure_rate"} 1.0' in metrics
        assert 'grantexd_worker_iterations_total{worker="anomaly-detection"} 1.0' in metrics
    finally:
        stop_quietly(second)
