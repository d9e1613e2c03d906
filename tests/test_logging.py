"""Log output of the real daemon: JSON lines, request ids, quiet probes and no secrets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantexd.dev import free_port
from tests.support import (
    Backends,
    Daemon,
    bearer,
    create_database,
    daemon_environment,
    drop_database,
    new_daemon,
    signup,
    stop_quietly,
)

LEVELS = {"debug", "info", "warn", "error", "fatal"}


def parse_lines(daemon: Daemon) -> list[dict[str, Any]]:
    """Parse every stdout line, failing on the first one that is not a JSON object."""
    parsed = []
    for line in daemon.lines:
        value = json.loads(line)
        assert isinstance(value, dict), f"not a JSON object: {line}"
        parsed.append(value)
    return parsed


def wait_until_live(base_url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll /health/live, which responds whatever LOG_LEVEL filters out of the log."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base_url + "/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, f"grantexd exited with {process.returncode}"
        assert time.monotonic() < deadline, "grantexd did not answer /health/live within 30 s"
        time.sleep(0.05)


class ServedTraffic:
    """A daemon that has served a small grant flow, some failures and health probes, then stopped."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.responses: list[httpx.Response] = []
        self.health_responses: list[httpx.Response] = []
        self.secrets: list[str] = []
        self.started_ms = int(time.time() * 1000)
        self.finished_ms = 0

    def send(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = client.request(method, path, **kwargs)
        self.responses.append(response)
        return response

    def run(self) -> None:
        with httpx.Client(base_url=self.daemon.base_url, timeout=30) as client:
            api_key = signup(client)["apiKey"]
            self.secrets.append(api_key)
            headers = bearer(api_key)

            agent = self.send(client, "POST", "/v1/agents", json={"name": "logged-agent"}, headers=headers)
            assert agent.status_code == 201, agent.text
            agent_id = agent.json()["agentId"]
            authorized = self.send(
                client,
                "POST",
                "/v1/authorize",
                json={"agentId": agent_id, "principalId": "user-1", "scopes": ["files:read"]},
                headers=headers,
            )
            assert authorized.status_code == 201, authorized.text
            exchanged = self.send(
                client,
                "POST",
                "/v1/token",
                json={"code": authorized.json()["code"], "agentId": agent_id},
                headers=headers,
            )
            assert exchanged.status_code == 201, exchanged.text
            grant = exchanged.json()
            self.secrets += [grant["grantToken"], grant["refreshToken"], authorized.json()["code"]]
            refreshed = self.send(
                client,
                "POST",
                "/v1/token/refresh",
                json={"refreshToken": grant["refreshToken"], "agentId": agent_id},
                headers=headers,
            )
            assert refreshed.status_code == 201, refreshed.text
            self.secrets += [refreshed.json()["grantToken"], refreshed.json()["refreshToken"]]
            verified = self.send(
                client, "POST", "/v1/tokens/verify", json={"token": grant["grantToken"]}, headers=headers
            )
            assert verified.status_code == 200, verified.text

            missing = self.send(client, "GET", "/v1/no-such-route", headers=headers)
            assert missing.status_code == 404
            bad_json = self.send(
                client,
                "POST",
                "/v1/agents",
                content=b'{"name": ',
                headers={**headers, "Content-Type": "application/json"},
            )
            assert bad_json.status_code == 400
            unauthenticated = self.send(client, "GET", "/v1/agents", headers=bearer("gx_test_not-a-real-key"))
            assert unauthenticated.status_code == 401
            traced = self.send(client, "GET", "/v1/agents", headers={**headers, "X-Request-Id": "trace-0123-abcd"})
            assert traced.status_code == 200

            for path in ("/health", "/health/live", "/health/ready"):
                self.health_responses.append(client.get(path))
        self.daemon.stop()
        self.finished_ms = int(time.time() * 1000)


@pytest.fixture(scope="module")
def traffic(backends: Backends) -> Iterator[ServedTraffic]:
    url = create_database(backends)
    daemon = new_daemon(backends, url)
    daemon.start()
    served = ServedTraffic(daemon)
    try:
        served.run()
        yield served
    finally:
        stop_quietly(daemon)
        drop_database(backends, url)


def test_log_lines_are_json_objects(traffic: ServedTraffic) -> None:
    lines = parse_lines(traffic.daemon)

    assert lines
    for line in lines:
        assert line["level"] in LEVELS, line
        assert isinstance(line["time"], int), line
        assert traffic.started_ms - 60_000 <= line["time"] <= traffic.finished_ms + 60_000, line
        assert isinstance(line["msg"], str), line
        assert line["msg"], line


def test_log_standard_fields_first(traffic: ServedTraffic) -> None:
    for line in parse_lines(traffic.daemon):
        assert list(line)[:3] == ["level", "time", "msg"], line


def test_log_request_completion_lines(traffic: ServedTraffic) -> None:
    lines = parse_lines(traffic.daemon)

    for response in traffic.responses:
        request_id = response.headers["X-Request-Id"]
        completed = [
            line for line in lines if line["msg"] == "request.completed" and line.get("reqId") == request_id
        ]
        assert len(completed) == 1, f"{response.request.method} {response.request.url.path}: {completed}"
        assert completed[0]["status"] == response.status_code
        assert isinstance(completed[0]["responseTime"], (int, float))
        assert completed[0]["responseTime"] >= 0
        assert completed[0]["method"] == response.request.method


def test_log_incoming_request_id(traffic: ServedTraffic) -> None:
    traced = [line for line in parse_lines(traffic.daemon) if line.get("reqId") == "trace-0123-abcd"]

    assert [line["msg"] for line in traced] == ["request.completed"]


def test_log_request_lines_carry_request_id(traffic: ServedTraffic) -> None:
    request_ids = {response.headers["X-Request-Id"] for response in traffic.responses}
    lines = parse_lines(traffic.daemon)
    agent_created = [line for line in lines if line["msg"] == "agent.created"]

    assert len(agent_created) == 1
    assert agent_created[0]["reqId"] in request_ids


def test_log_levels_by_status(traffic: ServedTraffic) -> None:
    completions = [line for line in parse_lines(traffic.daemon) if line["msg"] == "request.completed"]

    for line in completions:
        if line["status"] >= 500:
            assert line["level"] == "error", line
        else:
            assert line["level"] == "info", line


def test_log_health_probes_not_at_info(traffic: ServedTraffic) -> None:
    probe_ids = {response.headers["X-Request-Id"] for response in traffic.health_responses}
    probe_lines = [line for line in parse_lines(traffic.daemon) if line.get("reqId") in probe_ids]

    assert [response.status_code for response in traffic.health_responses] == [200, 200, 200]
    assert probe_lines == []


def test_log_contains_no_secrets(traffic: ServedTraffic) -> None:
    output = traffic.daemon.output()

    assert len(traffic.secrets) == 6
    for secret in traffic.secrets:
        assert secret not in output
    assert "gx_test_not-a-real-key" not in output


def test_log_shutdown_is_last(traffic: ServedTraffic) -> None:
    lines = parse_lines(traffic.daemon)

    assert lines[-1]["msg"] == "shutdown.complete"
    assert traffic.daemon.process is not None
    assert traffic.daemon.process.returncode == 0


def test_log_level_warn_drops_info(backends: Backends, database_url: str) -> None:
    daemon = new_daemon(backends, database_url, LOG_LEVEL="warn")
    try:
        # Daemon.wait_ready looks for startup.complete, an info line that this level drops.
        daemon.start(wait_ready=False)
        assert daemon.process is not None
        wait_until_live(daemon.base_url, daemon.process)
        with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
            signup(client)
            missing = client.get("/v1/no-such-route")
    finally:
        stop_quietly(daemon)

    assert missing.status_code == 404
    lines = parse_lines(daemon)
    assert {line["level"] for line in lines} <= {"warn", "error", "fatal"}
    assert "startup.signing_key.generated" in [line["msg"] for line in lines]


def test_daemon_writes_nothing_in_working_directory(
    backends: Backends, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "grantexd", "serve"],
        env=daemon_environment(database_url, backends.redis_url, port),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_live(f"http://127.0.0.1:{port}", process)
        httpx.get(f"http://127.0.0.1:{port}/v1/no-such-route", timeout=5)
        process.send_signal(signal.SIGTERM)
        status = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert status == 0
    assert list(tmp_path.iterdir()) == []
