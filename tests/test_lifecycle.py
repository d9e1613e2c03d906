"""Signals and systemd notifications against the real daemon: draining, forced stop, startup."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from grantexd import sdnotify
from tests.database_locks import MIGRATION_LOCK_KEY, held_transaction, lock_waiters
from tests.support import Backends, Daemon, bearer, new_daemon, query, signup, stop_quietly


def wait_until(condition: Callable[[], bool], timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
        time.sleep(0.02)


def has_logged(daemon: Daemon, message: str) -> bool:
    return any(line.get("msg") == message for line in daemon.json_lines())


def messages(daemon: Daemon) -> list[str]:
    return [str(line.get("msg")) for line in daemon.json_lines()]


@pytest.fixture
def running_daemon(backends: Backends, database_url: str) -> Iterator[Daemon]:
    daemon = new_daemon(backends, database_url)
    daemon.start()
    yield daemon
    stop_quietly(daemon)


def start_slow_agent_create(
    daemon: Daemon, database_url: str, executor: ThreadPoolExecutor
) -> Future[httpx.Response]:
    """Send POST /v1/agents while the test holds the agents table, and wait until it blocks on it."""
    with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
        api_key = signup(client)["apiKey"]
    pending = executor.submit(
        httpx.post,
        daemon.base_url + "/v1/agents",
        json={"name": "slow-agent"},
        headers=bearer(api_key),
        timeout=60,
    )
    wait_until(lambda: lock_waiters(database_url) > 0, 10, "POST /v1/agents to wait for the table lock")
    return pending


def test_sigterm_drains_slow_request(running_daemon: Daemon, database_url: str) -> None:
    daemon = running_daemon
    with ThreadPoolExecutor(max_workers=1) as executor:
        with held_transaction(database_url, "LOCK TABLE agents IN ACCESS EXCLUSIVE MODE") as lock:
            pending = start_slow_agent_create(daemon, database_url, executor)

            daemon.signal(signal.SIGTERM)
            wait_until(lambda: has_logged(daemon, "shutdown.requested"), 10, "shutdown.requested")
            try:
                ready = httpx.get(daemon.base_url + "/health/ready", timeout=5)
            except httpx.TransportError:
                # Hypercorn closes the listener as soon as shutdown begins, so a new connection
                # may be refused. The draining response is only seen while the listener is open.
                ready = None
            if ready is not None:
                assert ready.status_code == 503
                assert ready.json() == {"status": "draining"}
            assert daemon.process is not None
            assert daemon.process.poll() is None, "the daemon exited before its request finished"

            lock.release()
            response = pending.result(timeout=30)

    assert response.status_code == 201
    assert response.json()["name"] == "slow-agent"
    assert daemon.wait_exit(30) == 0
    assert query(database_url, "SELECT name FROM agents") == [{"name": "slow-agent"}]
    logged = messages(daemon)
    completed = next(
        index
        for index, line in enumerate(daemon.json_lines())
        if line.get("msg") == "request.completed" and line.get("route") == "/v1/agents"
    )
    assert logged.index("shutdown.requested") < completed
    assert completed < logged.index("shutdown.http.stopped")
    assert logged.index("shutdown.http.stopped") < logged.index("shutdown.database.closed")
    assert logged[-1] == "shutdown.complete"
    assert "shutdown.forced" not in logged


def test_second_sigterm_forces_stop(running_daemon: Daemon, database_url: str) -> None:
    daemon = running_daemon
    with ThreadPoolExecutor(max_workers=1) as executor:
        with held_transaction(database_url, "LOCK TABLE agents IN ACCESS EXCLUSIVE MODE"):
            pending = start_slow_agent_create(daemon, database_url, executor)

            daemon.signal(signal.SIGTERM)
            wait_until(lambda: has_logged(daemon, "shutdown.draining"), 10, "shutdown.draining")
            daemon.signal(signal.SIGTERM)
            # The forced stop must not wait for the request, which still waits for the lock.
            status = daemon.wait_exit(20)

        with pytest.raises(httpx.TransportError):
            pending.result(timeout=30)

    assert status == 0
    logged = messages(daemon)
    assert "shutdown.forced" in logged
    stopped = next(line for line in daemon.json_lines() if line.get("msg") == "shutdown.http.stopped")
    assert stopped["forced"] is True
    assert logged[-1] == "shutdown.complete"
    assert query(database_url, "SELECT count(*) AS agents FROM agents") == [{"agents": 0}]


def test_sigint_stops_like_sigterm(running_daemon: Daemon) -> None:
    running_daemon.signal(signal.SIGINT)

    assert running_daemon.wait_exit(30) == 0
    requested = next(line for line in running_daemon.json_lines() if line.get("msg") == "shutdown.requested")
    assert requested["reason"] == "SIGINT"
    assert messages(running_daemon)[-1] == "shutdown.complete"


def receive_notifications(notify_socket: socket.socket, until: str) -> list[str]:
    received: list[str] = []
    while until not in received:
        received.append(notify_socket.recv(4096).decode())
    return received


def test_sd_notify_ready_watchdog_stopping(backends: Backends, database_url: str, tmp_path: Path) -> None:
    socket_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(socket_path))
        notify_socket.settimeout(30)
        # systemd sets WATCHDOG_USEC=400000 for WatchdogSec=0.4 s. grantexd pings at half that interval.
        daemon = new_daemon(backends, database_url, NOTIFY_SOCKET=str(socket_path), WATCHDOG_USEC="400000")
        try:
            daemon.start(wait_ready=False)
            until_ready = receive_notifications(notify_socket, "READY=1")
            live = httpx.get(daemon.base_url + "/health/live", timeout=5)
            until_watchdog = receive_notifications(notify_socket, "WATCHDOG=1")

            daemon.signal(signal.SIGTERM)
            until_stopping = receive_notifications(notify_socket, "STOPPING=1")
            status = daemon.wait_exit(30)
        finally:
            stop_quietly(daemon)

    assert until_ready == ["READY=1"]
    assert live.status_code == 200
    assert until_watchdog == ["WATCHDOG=1"]
    assert set(until_stopping) <= {"WATCHDOG=1", "STOPPING=1"}
    assert status == 0


def test_sigterm_while_connecting_to_database(backends: Backends) -> None:
    # A loopback listener that accepts PostgreSQL's connection and never replies holds startup
    # at the PostgreSQL step.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(30)
        port = listener.getsockname()[1]
        daemon = new_daemon(backends, f"postgresql://postgres@127.0.0.1:{port}/grantex", DB_CONNECT_TIMEOUT="60")
        try:
            daemon.start(wait_ready=False)
            connection, _ = listener.accept()
            with connection:
                daemon.signal(signal.SIGTERM)
                status = daemon.wait_exit(20)
        finally:
            stop_quietly(daemon)

    assert status == 0
    logged = messages(daemon)
    assert "startup.interrupted" in logged
    assert "startup.database.connected" not in logged
    assert "startup.http.listening" not in logged
    assert not [line for line in daemon.json_lines() if line.get("level") == "fatal"]


def test_sigterm_while_waiting_for_migration_lock(backends: Backends, database_url: str) -> None:
    with held_transaction(database_url, f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"):
        daemon = new_daemon(backends, database_url)
        try:
            daemon.start(wait_ready=False)
            wait_until(lambda: has_logged(daemon, "migration.lock.waiting"), 20, "migration.lock.waiting")
            daemon.signal(signal.SIGTERM)
            status = daemon.wait_exit(20)
        finally:
            stop_quietly(daemon)

    assert status == 0
    logged = messages(daemon)
    assert "startup.interrupted" in logged
    assert "startup.migrations.done" not in logged
    assert "shutdown.database.closed" in logged


def test_sd_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"grantexd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind("\0" + name)
        notify_socket.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        sent = sdnotify.notify("READY=1")
        received = notify_socket.recv(4096)

    assert sent is True
    assert received == b"READY=1"


def test_sd_notify_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    assert sdnotify.notify("READY=1") is False


def test_drain_delay_keeps_listener_open(backends: Backends, database_url: str) -> None:
    daemon = new_daemon(backends, database_url, SHUTDOWN_DRAIN_DELAY="3")
    daemon.start()
    try:
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: has_logged(daemon, "shutdown.drain_delay"), 10, "shutdown.drain_delay")
        ready = httpx.get(f"{daemon.base_url}/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json() == {"status": "draining"}
        assert httpx.get(f"{daemon.base_url}/health/live", timeout=5).status_code == 200
        # Requests that still arrive are served while the load balancer catches up.
        assert httpx.post(f"{daemon.base_url}/v1/signup", json={"name": "late"}, timeout=5).status_code == 201
        assert daemon.wait_exit(30) == 0
        order = messages(daemon)
        assert order.index("shutdown.drain_delay") < order.index("shutdown.draining") < order.index("shutdown.complete")
    finally:
        stop_quietly(daemon)
