"""Health probes against the real daemon while its own PostgreSQL and Redis stop and return."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from grantexd.dev import EmbeddedPostgres, EmbeddedRedis
from tests.support import Backends, Daemon, bearer, new_daemon, query, signup, stop_quietly


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    redis = EmbeddedRedis(tmp_path / "redis", persistent=False)
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL server that the tests of this module stop and restart."""
    # Not under tmp_path: as root the server runs as nobody, which must traverse every parent
    # directory, and each pytest session resets /tmp/pytest-of-<user> to mode 0700 when it
    # starts, so a concurrent session would lock the server out of its data directory.
    directory = Path(tempfile.mkdtemp(prefix="grantexd-test-postgres-"))
    postgres = EmbeddedPostgres(directory / "data")
    postgres.start()
    yield postgres
    postgres.stop()
    shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class OwnDatabase:
    server: EmbeddedPostgres
    url: str


@pytest.fixture
def own_postgres(postgres_server: EmbeddedPostgres) -> OwnDatabase:
    """A fresh database on the module's server, which is started again if a test left it stopped."""
    if postgres_server.process is None:
        postgres_server.start()
    name = f"grantexd_health_{uuid.uuid4().hex[:12]}"
    postgres_server.create_database(name)
    return OwnDatabase(server=postgres_server, url=postgres_server.url(name))


@pytest.fixture
def hung_redis_port() -> Iterator[int]:
    """A loopback port that accepts connections and never replies, like a hung Redis."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextmanager
def frozen(postgres: EmbeddedPostgres) -> Iterator[None]:
    """Stop the server and its backends with SIGSTOP, so connections are accepted but get no reply.

    PostgreSQL backends run in their own sessions, so they are found as the postmaster's children.
    """
    assert postgres.process is not None
    postmaster = postgres.process.pid
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The parent pid is the second field after the parenthesised command name.
        if int(stat.rpartition(")")[2].split()[1]) == postmaster:
            pids.append(int(entry))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def start_daemon(backends: Backends, database_url: str, redis_url: str, **overrides: str) -> Daemon:
    daemon = new_daemon(backends, database_url, redis_url, **overrides)
    daemon.start()
    return daemon


def wait_for_health(client: httpx.Client, status_code: int, timeout_seconds: float = 15) -> httpx.Response:
    """Probe /health until it returns ``status_code`` or the time runs out, and return the last response."""
    deadline = time.monotonic() + timeout_seconds
    response = client.get("/health")
    while response.status_code != status_code and time.monotonic() < deadline:
        time.sleep(0.05)
        response = client.get("/health")
    return response


def test_health_ok(client: httpx.Client) -> None:
    health = client.get("/health")
    live = client.get("/health/live")
    ready = client.get("/health/ready")

    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert live.status_code == 200
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok"}


def test_health_redis_down_and_back(backends: Backends, database_url: str, own_redis: EmbeddedRedis) -> None:
    daemon = start_daemon(backends, database_url, own_redis.url())
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=15) as client:
            assert wait_for_health(client, 200).status_code == 200

            own_redis.stop()
            down = client.get("/health")
            ready_down = client.get("/health/ready")
            live_down = client.get("/health/live")

            own_redis.start()
            back = wait_for_health(client, 200)
    finally:
        stop_quietly(daemon)

    assert down.status_code == 503
    assert down.json() == {"status": "degraded", "failing": ["redis"]}
    assert ready_down.status_code == 503
    assert ready_down.json() == {"status": "degraded", "failing": ["redis"]}
    assert live_down.status_code == 200
    assert back.status_code == 200
    assert back.json() == {"status": "ok"}


def test_health_db_down_and_back(backends: Backends, own_postgres: OwnDatabase) -> None:
    daemon = start_daemon(backends, own_postgres.url, backends.redis_url)
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=15) as client:
            api_key = signup(client)["apiKey"]

            own_postgres.server.stop()
            down = client.get("/health")
            live_down = client.get("/health/live")
            read_down = client.get("/v1/agents", headers=bearer(api_key))
            write_down = client.post("/v1/agents", json={"name": "while-down"}, headers=bearer(api_key))

            own_postgres.server.start()
            back = wait_for_health(client, 200)
            read_back = client.get("/v1/agents", headers=bearer(api_key))
            write_back = client.post("/v1/agents", json={"name": "after-restart"}, headers=bearer(api_key))
    finally:
        stop_quietly(daemon)

    assert down.status_code == 503
    assert down.json() == {"status": "degraded", "failing": ["db"]}
    assert live_down.status_code == 200
    for response in (read_down, write_down):
        assert response.status_code == 503
        assert response.json() == {
            "message": "The database is unavailable; retry the request shortly",
            "code": "SERVICE_UNAVAILABLE",
            "requestId": response.headers["X-Request-Id"],
        }
    assert back.status_code == 200
    assert back.json() == {"status": "ok"}
    assert read_back.status_code == 200
    assert read_back.json() == {"agents": []}
    assert write_back.status_code == 201


def test_health_both_down(
    backends: Backends, own_postgres: OwnDatabase, own_redis: EmbeddedRedis
) -> None:
    daemon = start_daemon(backends, own_postgres.url, own_redis.url())
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=15) as client:
            own_postgres.server.stop()
            own_redis.stop()
            down = client.get("/health")
            live_down = client.get("/health/live")

            own_postgres.server.start()
            own_redis.start()
            back = wait_for_health(client, 200)
    finally:
        stop_quietly(daemon)

    assert down.status_code == 503
    assert down.json() == {"status": "degraded", "failing": ["db", "redis"]}
    assert live_down.status_code == 200
    assert back.status_code == 200


def test_health_hung_redis(backends: Backends, database_url: str, hung_redis_port: int) -> None:
    # HEALTH_TIMEOUT is below REDIS_TIMEOUT, so the probe's own timeout is what ends the wait.
    daemon = start_daemon(
        backends, database_url, f"redis://127.0.0.1:{hung_redis_port}/0", HEALTH_TIMEOUT="1", REDIS_TIMEOUT="5"
    )
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=15) as client:
            health = client.get("/health")
            live = client.get("/health/live")
    finally:
        stop_quietly(daemon)

    assert health.status_code == 503
    assert health.json() == {"status": "degraded", "failing": ["redis"]}
    assert live.status_code == 200


def test_health_hung_db(backends: Backends, own_postgres: OwnDatabase) -> None:
    # DB_COMMAND_TIMEOUT is far above the client's timeout, so only HEALTH_TIMEOUT can end the probe.
    daemon = start_daemon(
        backends, own_postgres.url, backends.redis_url, HEALTH_TIMEOUT="1", DB_COMMAND_TIMEOUT="120"
    )
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=20) as client:
            signup(client)
            with frozen(own_postgres.server):
                first = client.get("/health")
                second = client.get("/health")
                live = client.get("/health/live")
            back = wait_for_health(client, 200)
    finally:
        stop_quietly(daemon)

    assert first.status_code == 503
    assert first.json() == {"status": "degraded", "failing": ["db"]}
    assert second.status_code == 503
    assert live.status_code == 200
    assert back.status_code == 200


def test_api_request_hung_db(backends: Backends, own_postgres: OwnDatabase) -> None:
    daemon = start_daemon(
        backends, own_postgres.url, backends.redis_url, DB_COMMAND_TIMEOUT="1", DB_CONNECT_TIMEOUT="1"
    )
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=20) as client:
            api_key = signup(client)["apiKey"]
            with frozen(own_postgres.server):
                hung = client.get("/v1/agents", headers=bearer(api_key))
            back = client.get("/v1/agents", headers=bearer(api_key))
    finally:
        stop_quietly(daemon)

    assert hung.status_code == 503
    assert hung.json()["code"] == "SERVICE_UNAVAILABLE"
    assert hung.json()["requestId"] == hung.headers["X-Request-Id"]
    assert back.status_code == 200


def test_health_db_rejects_login(backends: Backends, own_postgres: OwnDatabase) -> None:
    # The daemon logs in as its own role, which the test revokes as an operator rotating
    # credentials would, then ends the role's sessions so that the pool must log in again.
    role = f"grantexd_app_{uuid.uuid4().hex[:8]}"
    admin_url = own_postgres.url
    query(admin_url, f"CREATE ROLE {role} LOGIN SUPERUSER")
    daemon_url = own_postgres.url.replace("postgres@", f"{role}@", 1)
    daemon = start_daemon(backends, daemon_url, backends.redis_url)
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=15) as client:
            api_key = signup(client)["apiKey"]

            query(admin_url, f"ALTER ROLE {role} NOLOGIN")
            query(admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
            rejected_health = client.get("/health")
            rejected_request = client.get("/v1/agents", headers=bearer(api_key))

            query(admin_url, f"ALTER ROLE {role} LOGIN")
            back = wait_for_health(client, 200)
            request_back = client.get("/v1/agents", headers=bearer(api_key))
    finally:
        stop_quietly(daemon)

    assert rejected_health.status_code == 503, daemon.output()
    assert rejected_health.json() == {"status": "degraded", "failing": ["db"]}
    assert rejected_request.status_code == 503, daemon.output()
    assert rejected_request.json()["code"] == "SERVICE_UNAVAILABLE"
    assert back.status_code == 200
    assert request_back.status_code == 200
