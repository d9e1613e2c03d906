"""Test support: real PostgreSQL and Redis, fresh databases, and the real daemon as a process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from grantexd.dev import free_port

T = TypeVar("T")

REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Backends:
    """The PostgreSQL server (as an admin URL without a database) and the Redis URL."""

    postgres_admin_url: str
    redis_url: str

    def database_url(self, name: str) -> str:
        parts = urlsplit(self.postgres_admin_url)
        return urlunsplit(parts._replace(path=f"/{name}"))


def run_asyncio(coroutine_function: Callable[[], Awaitable[T]]) -> T:
    """Run an asyncio coroutine in a thread of its own.

    Tests that run inside Trio (pytest-trio) cannot call asyncio.run in their own thread once
    trio_asyncio is imported, so every asyncpg helper here runs on a short-lived thread.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine_function()).result()


def _run_admin(admin_url: str, statement: str) -> None:
    async def execute() -> None:
        connection = await asyncpg.connect(admin_url, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    run_asyncio(execute)


def create_database(backends: Backends) -> str:
    """Create an empty database with a unique name and return its URL."""
    name = f"grantexd_test_{uuid.uuid4().hex[:16]}"
    _run_admin(backends.postgres_admin_url, f'CREATE DATABASE "{name}"')
    return backends.database_url(name)


def drop_database(backends: Backends, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    _run_admin(backends.postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, statement: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            return [dict(row) for row in await connection.fetch(statement, *args)]
        finally:
            await connection.close()

    return run_asyncio(fetch)


@dataclass
class Daemon:
    """A ``grantexd serve`` process on a free loopback port, with its stdout collected."""

    environ: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout_seconds: float = 30) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "grantexd", "serve"],
            env=self.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPOSITORY,
        )
        self._reader = threading.Thread(target=self._collect_output, daemon=True)
        self._reader.start()
        if wait_ready:
            self.wait_ready(timeout_seconds)

    def _collect_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))

    def wait_ready(self, timeout_seconds: float = 30) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"grantexd exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base_url + "/health/live", timeout=1).status_code == 200:
                    if any('"startup.complete"' in line for line in self.lines):
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"grantexd did not become ready within {timeout_seconds} s:\n{self.output()}")

    def signal(self, number: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait_exit(self, timeout_seconds: float = 40) -> int:
        assert self.process is not None
        code = self.process.wait(timeout_seconds)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait_exit(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait_exit(10)

    def output(self) -> str:
        return "\n".join(self.lines)

    def json_lines(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.lines:
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                parsed.append({"unparsed": line})
        return parsed


def daemon_environment(database_url: str, redis_url: str, port: int, **overrides: str) -> dict[str, str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "SYSTEMROOT")
    }
    environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "AUTO_GENERATE_KEYS": "true",
            "JWT_ISSUER": f"http://127.0.0.1:{port}",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "SHUTDOWN_GRACE_PERIOD": "10",
            # Tests sign up many developers from one address; the rate-limit tests turn these on.
            "RATE_LIMIT_IP_PER_MINUTE": "0",
            "RATE_LIMIT_DEVELOPER_PER_MINUTE": "0",
            "RATE_LIMIT_AUTHORIZE_PER_MINUTE": "0",
            "LOG_LEVEL": "info",
        }
    )
    environ.update(overrides)
    return environ


def new_daemon(backends: Backends, database_url: str, redis_url: str | None = None, **overrides: str) -> Daemon:
    port = free_port()
    return Daemon(environ=daemon_environment(database_url, redis_url or backends.redis_url, port, **overrides), port=port)


def stop_quietly(daemon: Daemon) -> None:
    try:
        daemon.stop()
    except Exception:  # noqa: BLE001 - teardown must not hide the test's own failure
        if daemon.process is not None:
            daemon.process.kill()


def signup(client: httpx.Client, mode: str = "sandbox", name: str = "Test developer") -> dict[str, Any]:
    """Create a developer through the API and return the signup response (with its apiKey)."""
    response = client.post("/v1/signup", json={"name": name, "mode": mode})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}
