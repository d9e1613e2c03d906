"""``grantexd dev`` run as a process, the way a developer runs it from the README.

The command starts its own PostgreSQL and redis-server from the ``embedded`` extra, so this test
needs neither TEST_DATABASE_URL nor TEST_REDIS_URL. It reads the banner on stderr, runs a sandbox
grant flow over HTTP, stops the command with SIGINT (what Ctrl-C sends), and starts it again on
the same data directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from grantexd.dev import free_port
from tests.support import REPOSITORY, bearer

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds child processes in /proc")

_BANNER_PATTERNS = {
    "base_url": re.compile(r"grantexd is running at (\S+)"),
    "live_key": re.compile(r"live API key:\s+(\S+)"),
    "sandbox_key": re.compile(r"sandbox API key:\s+(\S+)"),
    "postgres_url": re.compile(r"PostgreSQL:\s+(\S+)"),
    "redis_url": re.compile(r"Redis:\s+(\S+)"),
}


@dataclass(frozen=True)
class Banner:
    base_url: str
    live_key: str
    sandbox_key: str
    postgres_url: str
    redis_url: str

    @property
    def postgres_port(self) -> int:
        return _port_of(self.postgres_url)

    @property
    def redis_port(self) -> int:
        return _port_of(self.redis_url)


def _port_of(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None, f"no port in {url}"
    return port


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in field 2 may contain spaces and parentheses; the fields after it do not.
    fields_after_name = stat.rpartition(")")[2].split()
    return int(fields_after_name[1])


def _children(pid: int) -> dict[int, str]:
    """Return the direct children of ``pid`` with their command names."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent_pid(int(entry.name)) == pid:
            try:
                children[int(entry.name)] = (entry / "comm").read_text().strip()
            except OSError:
                continue
    return children


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _processes_in(directory: Path) -> list[int]:
    """Return the pids whose working directory or command line is inside ``directory``.

    The embedded PostgreSQL has the data directory on its command line, and redis-server,
    which rewrites its command line, runs with its data directory as working directory.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _is_running(int(entry.name)):
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().decode(errors="replace")
            working_directory = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(directory) in command_line or working_directory.startswith(str(directory)):
            found.append(int(entry.name))
    return found


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class DevCommand:
    """One ``python -m grantexd dev`` process, with its stdout (logs) and stderr (banner) collected."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    embedded_pids: dict[int, str] = field(default_factory=dict)
    _readers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        environ = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
        }
        environ["LOG_LEVEL"] = "info"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "grantexd", "dev", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPOSITORY,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        for stream, lines in ((self.process.stdout, self.stdout_lines), (self.process.stderr, self.stderr_lines)):
            reader = threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            reader.start()
            self._readers.append(reader)

    @staticmethod
    def _collect(stream: object, lines: list[str]) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))

    def output(self) -> str:
        return "stderr:\n" + "\n".join(self.stderr_lines) + "\nstdout:\n" + "\n".join(self.stdout_lines)

    def wait_banner(self, timeout_seconds: float = 60) -> Banner:
        """Wait until the banner is complete, then record the embedded servers' pids."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            found = {}
            for name, pattern in _BANNER_PATTERNS.items():
                for line in list(self.stderr_lines):
                    match = pattern.search(line)
                    if match:
                        found[name] = match.group(1)
            if len(found) == len(_BANNER_PATTERNS) and any("Press Ctrl-C" in line for line in self.stderr_lines):
                self.embedded_pids = _children(self.process.pid)
                return Banner(**found)
            if self.process.poll() is not None:
                raise AssertionError(f"grantexd dev exited with {self.process.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"grantexd dev printed no complete banner within {timeout_seconds} s:\n{self.output()}")

    def wait_exit(self, timeout_seconds: float = 45) -> int:
        """Wait for the process to exit and for its output to be read; return the exit status."""
        assert self.process is not None
        code = self.process.wait(timeout_seconds)
        for reader in self._readers:
            reader.join(5)
        return code

    def interrupt(self, timeout_seconds: float = 45) -> int:
        """Send SIGINT, as Ctrl-C does, and return the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.wait_exit(timeout_seconds)

    def stop_quietly(self) -> None:
        """Teardown after a failure: stop the command, then any embedded server it left behind."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.interrupt()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in self.embedded_pids:
            if _is_running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Yield a data directory outside pytest's temporary root.

    Run as root, grantexd dev runs PostgreSQL as ``nobody``, which needs the search permission on
    every directory above the data directory. Every pytest session removes the group and other
    permissions from its temporary root (/tmp/pytest-of-root, in _pytest/tmpdir.py), which would
    cut off the server of another session that is still running.
    """
    parent = Path(tempfile.mkdtemp(prefix="grantexd-dev-test-"))
    yield parent / "grantexd-data"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def dev_commands() -> Iterator[list[DevCommand]]:
    started: list[DevCommand] = []
    yield started
    for command in started:
        command.stop_quietly()


def _sandbox_grant(client: httpx.Client, sandbox_key: str, agent_id: str) -> dict[str, str]:
    authorized = client.post(
        "/v1/authorize",
        headers=bearer(sandbox_key),
        json={"agentId": agent_id, "principalId": "user-1", "scopes": ["calendar:read"]},
    )
    assert authorized.status_code == 201, authorized.text
    assert authorized.json()["sandbox"] is True
    exchanged = client.post(
        "/v1/token",
        headers=bearer(sandbox_key),
        json={"code": authorized.json()["code"], "agentId": agent_id},
    )
    assert exchanged.status_code == 201, exchanged.text
    body: dict[str, str] = exchanged.json()
    return body


def test_dev_serves_stops_and_restarts(data_dir: Path, dev_commands: list[DevCommand]) -> None:
    port = free_port()

    first = DevCommand(data_dir=data_dir, port=port)
    dev_commands.append(first)
    first.start()
    banner = first.wait_banner()
    assert banner.base_url == f"http://127.0.0.1:{port}"
    assert banner.live_key.startswith("gx_live_")
    assert banner.sandbox_key.startswith("gx_test_")
    assert sorted(first.embedded_pids.values()) == ["postgres", "redis-server"], first.embedded_pids
    assert _accepts_connections(banner.postgres_port)
    assert _accepts_connections(banner.redis_port)
    assert set(first.embedded_pids) <= set(_processes_in(data_dir))

    with httpx.Client(base_url=banner.base_url, timeout=10) as client:
        created = client.post(
            "/v1/agents",
            headers=bearer(banner.sandbox_key),
            json={"name": "my-agent", "scopes": ["calendar:read"]},
        )
        assert created.status_code == 201, created.text
        agent_id = created.json()["agentId"]
        issued = _sandbox_grant(client, banner.sandbox_key, agent_id)
        verified = client.post(
            "/v1/tokens/verify", headers=bearer(banner.sandbox_key), json={"token": issued["grantToken"]}
        )
        assert verified.json()["valid"] is True
        live_agents = client.get("/v1/agents", headers=bearer(banner.live_key))
        assert live_agents.status_code == 200, live_agents.text
        assert live_agents.json()["agents"] == []
        first_key_ids = [key["kid"] for key in client.get("/.well-known/jwks.json").json()["keys"]]

    assert first.interrupt() == 0, first.output()
    assert '"shutdown.complete"' in first.stdout_lines[-1], first.output()
    for pid, name in first.embedded_pids.items():
        assert not _is_running(pid), f"{name} (pid {pid}) still runs after grantexd dev exited"
    assert not _accepts_connections(banner.postgres_port)
    assert not _accepts_connections(banner.redis_port)
    assert _processes_in(data_dir) == []

    second = DevCommand(data_dir=data_dir, port=port)
    dev_commands.append(second)
    second.start()
    restarted = second.wait_banner()
    assert restarted.live_key == banner.live_key
    assert restarted.sandbox_key == banner.sandbox_key

    with httpx.Client(base_url=restarted.base_url, timeout=10) as client:
        listed = client.get("/v1/agents", headers=bearer(restarted.sandbox_key))
        assert listed.status_code == 200, listed.text
        assert [agent["agentId"] for agent in listed.json()["agents"]] == [agent_id]
        assert [key["kid"] for key in client.get("/.well-known/jwks.json").json()["keys"]] == first_key_ids
        verified = client.post(
            "/v1/tokens/verify", headers=bearer(restarted.sandbox_key), json={"token": issued["grantToken"]}
        )
        assert verified.status_code == 200, verified.text
        assert verified.json()["valid"] is True
        assert verified.json()["grantId"] == issued["grantId"]

    assert second.interrupt() == 0, second.output()
    assert _processes_in(data_dir) == []


def test_dev_busy_port_names_port(data_dir: Path, dev_commands: list[DevCommand]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        command = DevCommand(data_dir=data_dir, port=port)
        dev_commands.append(command)
        command.start()
        code = command.wait_exit(60)

    assert code == 1, command.output()
    assert '"startup.failed"' in command.stdout_lines[-1]
    assert f"127.0.0.1:{port} is already in use" in command.stdout_lines[-1]
    assert "--port" in command.stdout_lines[-1]
    assert _processes_in(data_dir) == []
