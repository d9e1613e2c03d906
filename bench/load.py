"""Load benchmark: start a grantexd process, drive it with concurrent HTTP clients, report the numbers.

Run from the repository root with the virtualenv active::

    python -m bench.load --json /tmp/grantexd-bench.json

The benchmark creates an empty database on the PostgreSQL server of ``--database-url``, starts
``python -m grantexd serve`` on it on a free loopback port, signs up its own developers, and runs
each scenario for ``--duration`` seconds at each client count of ``--concurrency``. At the end,
on an error and on Ctrl-C or SIGTERM, it stops the daemon and drops the database. Every address
it connects to must be a loopback address. See bench/README.rst for what each scenario measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import redis
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

REPOSITORY = Path(__file__).resolve().parent.parent
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from bench.profile_summary import summarize_profile  # noqa: E402 - needs the repository on sys.path
from grantexd.dev import free_port  # noqa: E402
from tests.support import Backends, create_database, daemon_environment, drop_database, query  # noqa: E402

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
RATE_LIMIT_VARIABLES = (
    "RATE_LIMIT_IP_PER_MINUTE",
    "RATE_LIMIT_DEVELOPER_PER_MINUTE",
    "RATE_LIMIT_AUTHORIZE_PER_MINUTE",
)
REQUEST_TIMEOUT_SECONDS = 30.0
# Each run records at most this many error messages; the error count still counts every error.
MAX_ERROR_SAMPLES = 5
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class RequestFailed(Exception):
    """A benchmark request got a response other than the one a working daemon sends."""


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RequestFailed(
            f"{response.request.method} {response.request.url.path} returned {response.status_code}, "
            f"expected {status}: {response.text[:200]}"
        )
    return response.json()


# ---------------------------------------------------------------------------------------------
# The daemon process


@dataclass
class DaemonProcess:
    """A ``grantexd serve`` process in a session of its own, so that Ctrl-C reaches only the benchmark."""

    environ: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_seconds: float = 60) -> None:
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "grantexd", "serve"],
                env=self.environ,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPOSITORY,
                start_new_session=True,
            )
        self._wait_ready(timeout_seconds)

    def _wait_ready(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"grantexd exited with {self.process.returncode}:\n{self.log_tail()}")
            # The HTTP server starts after migrations and key loading, and /health/ready also
            # checks PostgreSQL and Redis. The workers may still be in their first pass, which
            # the warm-up absorbs. The startup.complete log line is not used: LOG_LEVEL=warn hides it.
            try:
                if httpx.get(self.base_url + "/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"grantexd did not become ready within {timeout_seconds} s:\n{self.log_tail()}")

    def log_tail(self, line_count: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(daemon log {self.log_path} unreadable: {exc})"
        return "\n".join(lines[-line_count:])

    def rss_kib(self) -> int:
        """Return the resident set size from /proc/<pid>/status (VmRSS, in KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/{self.pid}/status has no VmRSS line")

    def cpu_seconds(self) -> float:
        """Return user plus system CPU time of all the daemon's threads, from /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # The command name in brackets may contain spaces, so split after its closing bracket.
        fields = stat[stat.rindex(")") + 2 :].split()
        user_ticks, system_ticks = int(fields[11]), int(fields[12])
        return (user_ticks + system_ticks) / CLOCK_TICKS_PER_SECOND

    def stop(self) -> int | None:
        """Send SIGTERM, wait for the drain, and kill the process if it has not exited in 40 s."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(40)
        except subprocess.TimeoutExpired:
            print(f"grantexd (pid {self.pid}) did not exit 40 s after SIGTERM, killing it", file=sys.stderr)
            self.process.kill()
            return self.process.wait(10)


# ---------------------------------------------------------------------------------------------
# Accounts and scenarios


@dataclass(frozen=True)
class Account:
    developer_id: str
    headers: dict[str, str]
    agent_id: str


@dataclass
class Fixtures:
    """The developers and tokens that the scenarios use, created once before the first run."""

    main: Account
    spread: list[Account]
    verify_token: str


@dataclass
class RefreshChain:
    """One client's grant for the refresh scenario: every refresh replaces the refresh token."""

    account: Account
    refresh_token: str


async def open_account(client: httpx.AsyncClient, database_url: str, name: str) -> Account:
    """Sign up a sandbox developer on the enterprise plan and register one agent for it.

    The enterprise plan has no quota on agents, active grants or audit entries, so that a run
    never ends in 402 responses: the free plan allows 1,000 active grants and 20,000 audit entries.
    """
    developer = expect(await client.post("/v1/signup", json={"name": name, "mode": "sandbox"}), 201)
    await trio.to_thread.run_sync(
        query, database_url, "UPDATE developers SET plan = 'enterprise' WHERE id = $1", developer["developerId"]
    )
    headers = {"Authorization": f"Bearer {developer['apiKey']}"}
    agent = expect(
        await client.post("/v1/agents", headers=headers, json={"name": "bench agent", "description": "", "scopes": []}),
        201,
    )
    return Account(developer_id=developer["developerId"], headers=headers, agent_id=agent["agentId"])


async def issue_grant(client: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    """Authorize (a sandbox developer gets an approved code at once) and exchange the code."""
    authorized = expect(
        await client.post(
            "/v1/authorize",
            headers=account.headers,
            json={"agentId": account.agent_id, "principalId": "bench-user", "scopes": ["files:read"]},
        ),
        201,
    )
    grant: dict[str, Any] = expect(
        await client.post(
            "/v1/token", headers=account.headers, json={"code": authorized["code"], "agentId": account.agent_id}
        ),
        201,
    )
    return grant


async def verify_token(client: httpx.AsyncClient, state: tuple[Account, str]) -> None:
    account, token = state
    body = expect(await client.post("/v1/tokens/verify", headers=account.headers, json={"token": token}), 200)
    if body.get("valid") is not True:
        raise RequestFailed(f"POST /v1/tokens/verify returned valid={body.get('valid')!r} for a valid token")


async def issue_token(client: httpx.AsyncClient, account: Account) -> None:
    await issue_grant(client, account)


async def refresh_token(client: httpx.AsyncClient, chain: RefreshChain) -> None:
    body = expect(
        await client.post(
            "/v1/token/refresh",
            headers=chain.account.headers,
            json={"refreshToken": chain.refresh_token, "agentId": chain.account.agent_id},
        ),
        201,
    )
    chain.refresh_token = body["refreshToken"]


async def restart_refresh_chain(client: httpx.AsyncClient, chain: RefreshChain) -> None:
    """Start a new grant after a failed refresh, because the old refresh token may be used up."""
    chain.refresh_token = (await issue_grant(client, chain.account))["refreshToken"]


async def get_jwks(client: httpx.AsyncClient, state: None) -> None:
    body = expect(await client.get("/.well-known/jwks.json"), 200)
    if not body.get("keys"):
        raise RequestFailed("GET /.well-known/jwks.json returned no keys")


async def get_health(client: httpx.AsyncClient, state: None) -> None:
    expect(await client.get("/health"), 200)


AUDIT_ENTRY = {
    "agentId": "ag_bench",
    "agentDid": "did:grantex:ag_bench",
    "grantId": "grnt_bench",
    "principalId": "bench-user",
    "action": "bench.append",
    "metadata": {"amount": 12.5, "currency": "EUR"},
}


async def append_audit_entry(client: httpx.AsyncClient, account: Account) -> None:
    expect(await client.post("/v1/audit/log", headers=account.headers, json=AUDIT_ENTRY), 201)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    requests_per_operation: int
    operation: Callable[[httpx.AsyncClient, Any], Awaitable[None]]
    # Creates one state object per client before a run.
    prepare: Callable[[httpx.AsyncClient, Fixtures, int], Awaitable[list[Any]]]
    # Runs untimed after a failed operation, to put the client's state right.
    recover: Callable[[httpx.AsyncClient, Any], Awaitable[None]] | None = None


async def prepare_verify(client: httpx.AsyncClient, fixtures: Fixtures, clients: int) -> list[Any]:
    return [(fixtures.main, fixtures.verify_token)] * clients


async def prepare_main_account(client: httpx.AsyncClient, fixtures: Fixtures, clients: int) -> list[Any]:
    return [fixtures.main] * clients


async def prepare_refresh(client: httpx.AsyncClient, fixtures: Fixtures, clients: int) -> list[Any]:
    chains = []
    for _ in range(clients):
        grant = await issue_grant(client, fixtures.main)
        chains.append(RefreshChain(account=fixtures.main, refresh_token=grant["refreshToken"]))
    return chains


async def prepare_nothing(client: httpx.AsyncClient, fixtures: Fixtures, clients: int) -> list[Any]:
    return [None] * clients


async def prepare_spread(client: httpx.AsyncClient, fixtures: Fixtures, clients: int) -> list[Any]:
    return [fixtures.spread[index % len(fixtures.spread)] for index in range(clients)]


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("verify", "POST /v1/tokens/verify of a valid grant token", 1, verify_token, prepare_verify),
        Scenario(
            "issue", "Sandbox grant flow: POST /v1/authorize + POST /v1/token", 2, issue_token, prepare_main_account
        ),
        Scenario(
            "refresh", "POST /v1/token/refresh, one refresh chain per client", 1, refresh_token, prepare_refresh,
            recover=restart_refresh_chain,
        ),
        Scenario("jwks", "GET /.well-known/jwks.json", 1, get_jwks, prepare_nothing),
        Scenario("health", "GET /health (probes PostgreSQL and Redis)", 1, get_health, prepare_nothing),
        Scenario("audit-one", "POST /v1/audit/log, all clients on one developer's chain", 1,
                 append_audit_entry, prepare_main_account),
        Scenario("audit-spread", "POST /v1/audit/log, clients spread over many developers", 1,
                 append_audit_entry, prepare_spread),
    )
}


# ---------------------------------------------------------------------------------------------
# Measuring one run


@dataclass
class RunResult:
    scenario: str
    clients: int
    repeat: int
    load_average_before: tuple[float, float, float]
    seconds: float
    operations: int
    errors: int
    operations_per_second: float
    requests_per_second: float
    latency_ms: dict[str, float]
    daemon_cpu_seconds: float
    daemon_cpu_ms_per_operation: float | None
    client_cpu_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    error_samples: list[str] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of an ascending sequence (0.0 when it is empty)."""
    if not sorted_values:
        return 0.0
    # Rounding first keeps 0.95 * 100 = 95.00000000000001 from becoming rank 96.
    rank = max(1, math.ceil(round(fraction * len(sorted_values), 9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class RunCounters:
    """Shared by the clients of one run: the operation budget, latencies and errors."""

    max_operations: int
    started: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def take_operation(self) -> bool:
        if self.started >= self.max_operations:
            return False
        self.started += 1
        return True

    def record_error(self, error: Exception) -> None:
        self.errors += 1
        self.record_sample(error)

    def record_sample(self, error: Exception) -> None:
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{type(error).__name__}: {error}")


async def drive_client(
    client: httpx.AsyncClient, scenario: Scenario, state: Any, counters: RunCounters, deadline: float
) -> None:
    """Run operations back to back until the deadline or the run's operation budget is reached."""
    while trio.current_time() < deadline and counters.take_operation():
        started = time.perf_counter()
        try:
            await scenario.operation(client, state)
        except (RequestFailed, httpx.HTTPError, ValueError, KeyError) as error:
            counters.record_error(error)
            if scenario.recover is not None:
                try:
                    await scenario.recover(client, state)
                except (RequestFailed, httpx.HTTPError, ValueError, KeyError) as recover_error:
                    # The failed operation is already counted, so this only keeps the message.
                    counters.record_sample(recover_error)
            continue
        counters.latencies.append(time.perf_counter() - started)


async def drive_clients(
    client: httpx.AsyncClient, scenario: Scenario, states: list[Any], seconds: float, max_operations: int
) -> RunCounters:
    counters = RunCounters(max_operations=max_operations)
    deadline = trio.current_time() + seconds
    # A hung request ends the run at the latest one request timeout after the deadline.
    with trio.move_on_after(seconds + REQUEST_TIMEOUT_SECONDS + 5):
        async with trio.open_nursery() as nursery:
            for state in states:
                nursery.start_soon(drive_client, client, scenario, state, counters, deadline)
    return counters


async def measure_run(
    daemon: DaemonProcess,
    fixtures: Fixtures,
    scenario: Scenario,
    clients: int,
    repeat: int,
    options: argparse.Namespace,
) -> RunResult:
    """Warm up, then run ``clients`` concurrent clients for ``options.duration`` seconds."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=daemon.base_url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as client:
        states = await scenario.prepare(client, fixtures, clients)
        # The warm-up opens the connections and fills caches. Its operations are not counted.
        await drive_clients(client, scenario, states, options.warmup, options.max_operations)

        load_average = os.getloadavg()
        rss_before = daemon.rss_kib()
        daemon_cpu_before = daemon.cpu_seconds()
        client_cpu_before = process_cpu_seconds()
        started = time.perf_counter()
        counters = await drive_clients(client, scenario, states, options.duration, options.max_operations)
        seconds = time.perf_counter() - started
        daemon_cpu = daemon.cpu_seconds() - daemon_cpu_before
        client_cpu = process_cpu_seconds() - client_cpu_before
        rss_after = daemon.rss_kib()

    latencies = sorted(counters.latencies)
    operations = len(latencies)
    return RunResult(
        scenario=scenario.name,
        clients=clients,
        repeat=repeat,
        load_average_before=(round(load_average[0], 2), round(load_average[1], 2), round(load_average[2], 2)),
        seconds=round(seconds, 3),
        operations=operations,
        errors=counters.errors,
        operations_per_second=round(operations / seconds, 1),
        requests_per_second=round(operations * scenario.requests_per_operation / seconds, 1),
        latency_ms={
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p95": round(percentile(latencies, 0.95) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(latencies[-1] * 1000, 2) if latencies else 0.0,
        },
        daemon_cpu_seconds=round(daemon_cpu, 2),
        daemon_cpu_ms_per_operation=round(daemon_cpu * 1000 / operations, 3) if operations else None,
        client_cpu_seconds=round(client_cpu, 2),
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        error_samples=counters.error_samples,
    )


# ---------------------------------------------------------------------------------------------
# Reporting


def format_table(scenario: Scenario, results: list[RunResult], markdown: bool) -> str:
    """Return one scenario's runs as an RST simple table, or a Markdown pipe table."""
    header = [
        "clients", "run", "op/s", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
        "daemon CPU", "CPU ms/op", "client CPU", "RSS MiB before", "RSS MiB after", "load 1m",
    ]
    rows = []
    for result in results:
        load = result.load_average_before[0]
        cpu_ms = result.daemon_cpu_ms_per_operation
        rows.append([
            str(result.clients),
            str(result.repeat),
            f"{result.operations_per_second:.1f}",
            f"{result.requests_per_second:.1f}",
            f"{result.latency_ms['p50']:.2f}",
            f"{result.latency_ms['p95']:.2f}",
            f"{result.latency_ms['p99']:.2f}",
            str(result.errors),
            f"{result.daemon_cpu_seconds / result.seconds:.0%}",
            "-" if cpu_ms is None else f"{cpu_ms:.2f}",
            f"{result.client_cpu_seconds / result.seconds:.0%}",
            f"{result.rss_before_kib / 1024:.1f}",
            f"{result.rss_after_kib / 1024:.1f}",
            f"{load:.2f}" + (" (high)" if load > 1.0 else ""),
        ])

    widths = [max(len(header[column]), *(len(row[column]) for row in rows)) for column in range(len(header))]

    title = f"{scenario.title} (one operation = {scenario.requests_per_operation} HTTP request(s))"
    if markdown:
        lines = [f"**{scenario.name}**: {title}", ""]
        lines.append("| " + " | ".join(cell.ljust(width) for cell, width in zip(header, widths)) + " |")
        lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
        for row in rows:
            lines.append("| " + " | ".join(cell.rjust(width) for cell, width in zip(row, widths)) + " |")
        return "\n".join(lines)

    rule = "  ".join("=" * width for width in widths)
    lines = [f"{scenario.name}: {title}", "", rule]
    lines.append("  ".join(cell.ljust(width) for cell, width in zip(header, widths)))
    lines.append(rule)
    for row in rows:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    lines.append(rule)
    return "\n".join(lines)


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPOSITORY, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"unknown ({exc})"
    return commit + (" with uncommitted changes" if dirty else "")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def describe_machine(database_url: str, redis_url: str) -> dict[str, Any]:
    postgres_version = query(database_url, "SELECT version() AS version")[0]["version"]
    with redis.Redis.from_url(redis_url, socket_timeout=5) as redis_client:
        redis_version = redis_client.info("server")["redis_version"]
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "free_h": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": postgres_version,
        "redis": redis_version,
    }


def measure_jwt_signing(seconds: float = 2.0, max_signatures: int = 5000) -> dict[str, float]:
    """Time PyJWT RS256 signing and verification with a 2048-bit key (the daemon's key size) in this process."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": "http://127.0.0.1", "sub": "bench-user", "scp": ["files:read"], "exp": 2_000_000_000}
    token = ""
    signatures = 0
    started = time.perf_counter()
    while signatures < max_signatures and time.perf_counter() - started < seconds:
        token = jwt.encode(claims, private_key, algorithm="RS256")
        signatures += 1
    sign_ms = (time.perf_counter() - started) * 1000 / signatures

    public_key = private_key.public_key()
    verifications = 0
    started = time.perf_counter()
    while verifications < max_signatures and time.perf_counter() - started < seconds:
        jwt.decode(token, public_key, algorithms=["RS256"])
        verifications += 1
    verify_ms = (time.perf_counter() - started) * 1000 / verifications
    return {"sign_ms": round(sign_ms, 3), "verify_ms": round(verify_ms, 3)}


# ---------------------------------------------------------------------------------------------
# Setup, the run loop and teardown


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname
    if host is None or host == "localhost":
        return True  # No host means a Unix socket on this machine.
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(option: str, url: str) -> None:
    """Reject a URL whose host is not a loopback address: this benchmark sends load to no other host."""
    if not is_loopback_url(url):
        raise SystemExit(
            f"{option} must point at a loopback address (127.0.0.0/8, ::1 or localhost), "
            f"got host {urlsplit(url).hostname!r}"
        )


async def create_fixtures(daemon: DaemonProcess, database_url: str, developer_count: int) -> Fixtures:
    async with httpx.AsyncClient(base_url=daemon.base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        main = await open_account(client, database_url, "bench developer")
        spread = [await open_account(client, database_url, f"bench developer {index}") for index in range(developer_count)]
        verify_grant = await issue_grant(client, main)
    return Fixtures(main=main, spread=spread, verify_token=verify_grant["grantToken"])


async def run_benchmark(daemon: DaemonProcess, database_url: str, options: argparse.Namespace) -> list[RunResult]:
    """Run every selected scenario at every client count, ``options.repeats`` times over.

    The repeats go round all scenarios in turn rather than back to back, so that a burst of
    load from another process on the machine shows up as one outlying run instead of two.
    """
    results: list[RunResult] = []
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            terminated = False

            async def cancel_on_sigterm() -> None:
                nonlocal terminated
                async for _ in signals:
                    terminated = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_on_sigterm)
            fixtures = await create_fixtures(daemon, database_url, options.developers)
            for repeat in range(1, options.repeats + 1):
                for name in options.scenarios:
                    for clients in options.concurrency:
                        scenario = SCENARIOS[name]
                        print(f"run {repeat}: {name} with {clients} client(s) for {options.duration:g} s", flush=True)
                        try:
                            result = await measure_run(daemon, fixtures, scenario, clients, repeat, options)
                        except RequestFailed as error:
                            # For example the 20 token exchanges per minute that --rate-limits allows.
                            print(f"  skipped: preparing the clients failed: {error}", flush=True)
                            continue
                        print(
                            f"  {result.operations_per_second:.1f} op/s, p50 {result.latency_ms['p50']:.2f} ms, "
                            f"p99 {result.latency_ms['p99']:.2f} ms, {result.errors} error(s), "
                            f"load average before {result.load_average_before[0]:.2f}",
                            flush=True,
                        )
                        for sample in result.error_samples:
                            print(f"  error: {sample}", flush=True)
                        results.append(result)
            nursery.cancel_scope.cancel()
    if terminated:
        raise KeyboardInterrupt
    return results


def start_profiler(pid: int, output: Path, rate: int) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
               "--output", str(output)]
    print("profiling the daemon with: " + " ".join(command), flush=True)
    return subprocess.Popen(command, start_new_session=True)


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    """Send SIGINT, which makes py-spy write its output, and wait for it to finish writing."""
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(60)
    except subprocess.TimeoutExpired:
        print(f"py-spy (pid {profiler.pid}) did not exit 60 s after SIGINT, killing it", file=sys.stderr)
        profiler.kill()
        profiler.wait(10)


def comma_separated_integers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 1,8,32, got {text!r}") from None
    if not values or any(value < 1 or value > 256 for value in values):
        raise argparse.ArgumentTypeError(f"each client count must be between 1 and 256, got {text!r}")
    return values


def scenario_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or text!r}. Choose from {', '.join(SCENARIOS)}"
        )
    return names


def bounded_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 600, got {text!r}")
    return value


# Set by the benchmark itself: the daemon must use the checked URLs and a free loopback port.
RESERVED_VARIABLES = ("DATABASE_URL", "REDIS_URL", "HOST", "PORT", "JWT_ISSUER")


def environment_setting(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name in RESERVED_VARIABLES:
        raise argparse.ArgumentTypeError(
            f"{name} is set by the benchmark; use --database-url or --redis-url to choose the servers"
        )
    if "://" in value and not is_loopback_url(value):
        raise argparse.ArgumentTypeError(f"{name} must point at a loopback address, got host {urlsplit(value).hostname!r}")
    return name, value


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="Start grantexd on a fresh database and measure throughput, latency and memory per scenario.",
    )
    parser.add_argument(
        "--database-url", default=DEFAULT_DATABASE_URL,
        help="PostgreSQL server to create the benchmark database on, as a URL whose user may CREATE DATABASE; "
        "the database in its path is only used to connect (default: %(default)s)",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis for the daemon (default: %(default)s)")
    parser.add_argument(
        "--scenarios", type=scenario_names, default=list(SCENARIOS),
        help=f"comma-separated scenarios to run (default: all: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--concurrency", type=comma_separated_integers, default=[1, 8, 32],
        help="comma-separated numbers of concurrent clients, each 1 to 256 (default: 1,8,32)",
    )

    parser.add_argument("--duration", type=bounded_seconds, default=15.0, help="measured seconds per run (default: 15)")
    parser.add_argument("--warmup", type=bounded_seconds, default=1.0, help="uncounted seconds before each run (default: 1)")
    parser.add_argument("--repeats", type=int, choices=range(1, 11), default=2, metavar="1..10",
                        help="runs of each scenario at each client count (default: 2)")
    parser.add_argument("--max-operations", type=int, default=200_000,
                        help="maximum operations in one measured run; the warm-up has a budget of the same size (default: 200000)")
    parser.add_argument("--developers", type=int, choices=range(1, 257), default=32, metavar="1..256",
                        help="developers the audit-spread scenario spreads its clients over (default: 32)")

    parser.add_argument("--rate-limits", action="store_true",
                        help="keep the daemon's default rate limits instead of turning them off")
    parser.add_argument("--daemon-env", action="append", type=environment_setting, default=[], metavar="NAME=VALUE",
                        help="set one more environment variable for the daemon, for example DB_POOL_MAX=20; repeatable")
    parser.add_argument("--log-level", choices=("debug", "info", "warn", "error"), default="info",
                        help="the daemon's LOG_LEVEL; info writes one access line per request (default: info)")
    parser.add_argument("--daemon-log", type=Path,
                        help="file for the daemon's output (default: a temporary file, removed at the end)")

    parser.add_argument("--json", type=Path, help="write the machine description and every run's numbers to this file")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables instead of RST tables")
    parser.add_argument("--py-spy", type=Path, metavar="PATH",
                        help="profile the daemon with py-spy (raw collapsed stacks) during all runs, write them to PATH "
                        "and print where the samples fall")
    parser.add_argument("--py-spy-rate", type=int, choices=range(1, 1001), default=100, metavar="1..1000",
                        help="py-spy samples per second (default: 100)")

    options = parser.parse_args(argv)
    if options.max_operations < 1:
        parser.error(f"--max-operations must be at least 1, got {options.max_operations}")
    return options


def report(
    options: argparse.Namespace,
    machine: dict[str, Any],
    signing: dict[str, float],
    results: list[RunResult],
    started_at: str,
) -> None:
    print()
    print(f"date: {started_at}")
    print(f"commit: {machine['git_commit']}")
    print(f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
          f"{machine['postgresql'].split(' on ')[0]}, Redis {machine['redis']}")
    print(f"PyJWT RS256 in the benchmark process: sign {signing['sign_ms']:.3f} ms, verify {signing['verify_ms']:.3f} ms")
    print()
    for name in options.scenarios:
        scenario_results = sorted((r for r in results if r.scenario == name), key=lambda r: (r.clients, r.repeat))
        if scenario_results:
            print(format_table(SCENARIOS[name], scenario_results, options.markdown))
            print()
    if options.json is not None:
        document = {
            "date": started_at,
            "command": " ".join([Path(sys.executable).name, "-m", "bench.load", *sys.argv[1:]]),
            "machine": machine,
            "options": {
                "scenarios": options.scenarios,
                "concurrency": options.concurrency,
                "duration_seconds": options.duration,
                "warmup_seconds": options.warmup,
                "repeats": options.repeats,
                "max_operations": options.max_operations,
                "developers": options.developers,
                "rate_limits": options.rate_limits,
                "log_level": options.log_level,
                "daemon_environment": dict(options.daemon_env),
            },
            "jwt_rs256_in_benchmark_process": signing,
            "runs": [dataclasses.asdict(result) for result in results],
        }
        options.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {options.json}")


def raise_keyboard_interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_trio_benchmark(daemon: DaemonProcess, database_url: str, options: argparse.Namespace) -> list[RunResult]:
    """Run the scenarios under Trio and raise a plain KeyboardInterrupt when Ctrl-C ended them.

    Trio nurseries wrap the KeyboardInterrupt of Ctrl-C in a BaseExceptionGroup.
    """
    try:
        return trio.run(run_benchmark, daemon, database_url, options)
    except BaseExceptionGroup as group:
        interrupts, _ = group.split(KeyboardInterrupt)
        if interrupts is not None:
            raise KeyboardInterrupt from group
        raise


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_arguments(argv)
    require_loopback("--database-url", options.database_url)
    require_loopback("--redis-url", options.redis_url)
    # Outside trio.run (setup and teardown) SIGTERM interrupts like Ctrl-C, so the cleanup below runs.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    backends = Backends(postgres_admin_url=options.database_url, redis_url=options.redis_url)
    log_directory = Path(tempfile.mkdtemp(prefix="grantexd-bench-"))
    log_path = options.daemon_log or log_directory / "grantexd.log"
    database_url: str | None = None
    daemon: DaemonProcess | None = None
    profiler: subprocess.Popen[bytes] | None = None
    failed = True
    try:
        print(f"uptime before setup: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        machine = {"git_commit": git_commit(), **describe_machine(options.database_url, options.redis_url)}
        signing = measure_jwt_signing()
        database_url = create_database(backends)
        port = free_port()
        environ = daemon_environment(database_url, options.redis_url, port, LOG_LEVEL=options.log_level)
        if options.rate_limits:
            for variable in RATE_LIMIT_VARIABLES:
                environ.pop(variable)
        environ.update(dict(options.daemon_env))
        daemon = DaemonProcess(environ=environ, port=port, log_path=log_path)
        daemon.start()
        database_name = urlsplit(database_url).path.lstrip("/")
        print(f"grantexd pid {daemon.pid} on {daemon.base_url}, database {database_name}, log in {log_path}", flush=True)
        if options.py_spy is not None:
            profiler = start_profiler(daemon.pid, options.py_spy, options.py_spy_rate)
        results = run_trio_benchmark(daemon, database_url, options)
        if profiler is not None:
            stop_profiler(profiler)
            profiler = None
            print()
            print(summarize_profile(options.py_spy.read_text()))
        report(options, machine, signing, results, started_at)
        failed = False
        return 0
    except KeyboardInterrupt:
        print("interrupted; stopping grantexd and dropping the benchmark database", file=sys.stderr)
        failed = False
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if profiler is not None:
            stop_profiler(profiler)
        if daemon is not None:
            exit_code = daemon.stop()
            if failed or exit_code not in (0, None):
                print(f"grantexd exited with {exit_code}; last lines of its log:\n{daemon.log_tail()}", file=sys.stderr)
        if database_url is not None:
            drop_database(backends, database_url)
        if options.daemon_log is None:
            shutil.rmtree(log_directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
