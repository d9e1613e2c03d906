"""REDIS_URL with Redis Sentinel and Redis Cluster: URL parsing, and the daemon against real servers.

Each server test starts its own redis-server processes on free loopback ports: a master, a
replica and three Sentinels, or a three-master cluster. The Sentinels declare a master down
after 500 ms, and the replica starts with priority 0, so that the test decides when the
Sentinels may promote it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
import trio
import trio_asyncio
from redis.crc import key_slot

from grantexd.config import ConfigError, load_config
from grantexd.dev import free_port, which_redis_server
from grantexd.store.redis import RedisStore, RedisUnavailable, rate_limit_key, revoked_grant_key, revoked_token_key
from grantexd.store.redis_url import ClusterURL, SentinelURL, parse_cluster_url, parse_sentinel_url
from tests.support import Backends, Daemon, new_daemon, stop_quietly

REDIS_SERVER = which_redis_server()
needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

SERVICE_NAME = "grantexd"
MASTER_PASSWORD = "master-password-5f1c"
SENTINEL_PASSWORD = "sentinel-password-9a2e"
IP_LIMIT = 5
LIMITS_ON = {"RATE_LIMIT_IP_PER_MINUTE": str(IP_LIMIT), "TRUST_PROXY": "1"}
WAIT_SECONDS = 20


# URL parsing, and the REDIS_URL problems that load_config reports.


def test_sentinel_url_full_form() -> None:
    parsed = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@10.0.0.1:26380,sentinel-b,[::1]:26381/my%20master/3"
        "?sentinel_username=watcher&sentinel_password=s%2Bcret"
    )
    assert parsed.sentinels == (("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381))
    assert parsed.service_name == "my master"
    assert parsed.db == 3
    assert parsed.username == "app"
    assert parsed.password == "p@ss"
    assert parsed.sentinel_username == "watcher"
    assert parsed.sentinel_password == "s+cret"


def test_sentinel_url_defaults() -> None:
    parsed = parse_sentinel_url("redis+sentinel://127.0.0.1/mymaster")
    assert parsed == SentinelURL(
        sentinels=(("127.0.0.1", 26379),),
        service_name="mymaster",
        db=0,
        username=None,
        password=None,
        sentinel_username=None,
        sentinel_password=None,
    )


def test_sentinel_url_password_without_username() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:secret@127.0.0.1/mymaster/")
    assert parsed.username is None
    assert parsed.password == "secret"
    assert parsed.db == 0


def test_sentinel_url_repr_hides_passwords() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:master-secret@h/m?sentinel_password=sentinel-secret")
    assert "master-secret" not in repr(parsed)
    assert "sentinel-secret" not in repr(parsed)


def test_cluster_url_forms() -> None:
    assert parse_cluster_url("redis+cluster://:pw@h1:7000,h2") == ClusterURL(
        nodes=(("h1", 7000), ("h2", 6379)), username=None, password="pw"
    )
    assert parse_cluster_url("redis+cluster://h1:7000/0").nodes == (("h1", 7000),)
    assert "pw" not in repr(parse_cluster_url("redis+cluster://:pw@h1"))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "must name the master"),
        ("redis+sentinel://127.0.0.1:26379/", "must name the master"),
        ("redis+sentinel:///mymaster", "at least one host"),
        ("redis+sentinel://h1,,h2/mymaster", "empty host"),
        ("redis+sentinel://h1:0/mymaster", "invalid port"),
        ("redis+sentinel://[::1/mymaster", "not a valid URL"),
        ("redis+sentinel://[::1]x/mymaster", "only :port may follow"),
        ("redis+sentinel://::1/mymaster", "IPv6 address without brackets"),
        ("redis+sentinel://h1/mymaster/first", "database number"),
        ("redis+sentinel://h1/mymaster/0/1", "at most a master name and a database number"),
        ("redis+sentinel://h1/mymaster?timeout=5", "unknown query parameter"),
        ("redis+sentinel://h1/mymaster#top", "fragment"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://h1:7000/1", "only database 0"),
        ("redis+cluster://h1:7000?read_from_replicas=1", "must not have query parameters"),
    ],
)
def test_sentinel_cluster_url_rejected(url: str, problem: str) -> None:
    parse = parse_sentinel_url if url.startswith("redis+sentinel") else parse_cluster_url
    with pytest.raises(ValueError, match=problem):
        parse(url)


def config_environment(redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": "postgresql://grantex@127.0.0.1:5432/grantex",
        "REDIS_URL": redis_url,
        "AUTO_GENERATE_KEYS": "true",
    }


@pytest.mark.parametrize(
    "redis_url",
    [
        "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.2:26379/mymaster/1?sentinel_password=spw",
        "redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001",
    ],
)
def test_config_accepts_sentinel_cluster_url(redis_url: str) -> None:
    config = load_config(config_environment(redis_url))
    assert config.redis_url.reveal() == redis_url


@pytest.mark.parametrize(
    ("redis_url", "problem"),
    [
        ("redis+sentinel://:leaked-secret@127.0.0.1:26379", "must name the master"),
        ("redis+sentinel://:leaked/secret@127.0.0.1:26379/mymaster", "invalid port"),
        ("redis+sentinel://leaked/secret@127.0.0.1/mymaster", "database number"),
        ("redis+sentinel://127.0.0.1,,127.0.0.2/mymaster", "empty host"),
        ("redis+sentinel://:leaked-secret@127.0.0.1/m?secret_leak=leaked-secret", "unknown query parameter"),
        ("redis+cluster://:leaked-secret@127.0.0.1:7000/2", "only database 0"),
        ("redis+cluster://:leaked-secret@127.0.0.1:99999", "invalid port"),
        ("redis+shard://:leaked-secret@127.0.0.1:7000", "redis+cluster://"),
    ],
)
def test_config_rejects_sentinel_cluster_url(redis_url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_environment(redis_url))
    assert set(caught.value.problems) == {"REDIS_URL"}
    assert problem in caught.value.problems["REDIS_URL"]
    assert "leaked" not in str(caught.value)
    assert "secret" not in str(caught.value)


def test_rate_limit_windows_share_cluster_slot() -> None:
    for subject in ("203.0.113.9", "dev_01J0", "odd}subject{"):
        current = rate_limit_key("ip", subject, 1000)
        previous = rate_limit_key("ip", subject, 999)
        assert key_slot(current.encode()) == key_slot(previous.encode()), subject


def test_revocation_key_names_unchanged() -> None:
    assert revoked_token_key("tok_1") == "revoked:tok:tok_1"
    assert revoked_grant_key("grnt_1") == "revoked:grant:grnt_1"


# Real servers.


def free_cluster_port() -> int:
    """Return a free port P whose cluster bus port, P + 10000, is free too (Redis 6 fixes that offset)."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise AssertionError("found no free port pair for a cluster node in 100 attempts")


@dataclass
class RedisServers:
    """redis-server processes on loopback ports, each with its own directory under ``root``."""

    root: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, *arguments: str, config_text: str | None = None, cluster_node: bool = False) -> int:
        assert REDIS_SERVER is not None
        port = free_cluster_port() if cluster_node else free_port()
        directory = self.root / str(port)
        directory.mkdir(parents=True)
        command = [REDIS_SERVER]
        if config_text is not None:
            # Sentinel mode reads a config file and rewrites it as its state changes.
            config_path = directory / "sentinel.conf"
            config_path.write_text(config_text)
            command += [str(config_path), "--sentinel"]
        command += [
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
            "--daemonize", "no",
            *arguments,
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes[port] = process
        self.wait_accepting(port)
        return port

    def wait_accepting(self, port: int) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            assert self.processes[port].poll() is None, self.log(port)
            # A TCP connect, because a PING without the password would fail on some servers.
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server on port {port} did not start:\n{self.log(port)}")

    def log(self, port: int) -> str:
        path = self.root / str(port) / "redis.log"
        return path.read_text() if path.exists() else "(no log)"

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for port in list(self.processes):
            self.kill(port)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[RedisServers]:
    group = RedisServers(tmp_path / "redis")
    yield group
    group.stop_all()


def wait_until(condition_name: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {WAIT_SECONDS} s waiting for {condition_name}")


@dataclass(frozen=True)
class SentinelGroup:
    master_port: int
    replica_port: int
    sentinel_ports: tuple[int, ...]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://:{MASTER_PASSWORD}@{hosts}/{SERVICE_NAME}/0?sentinel_password={SENTINEL_PASSWORD}"

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=SENTINEL_PASSWORD, socket_timeout=1)

    def master_port_reported(self) -> int | None:
        try:
            with self.sentinel(self.sentinel_ports[0]) as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE_NAME)
        except redis.ConnectionError:
            return None
        return None if address is None else int(address[1])


def start_sentinel_group(servers: RedisServers) -> SentinelGroup:
    password = ("--requirepass", MASTER_PASSWORD, "--masterauth", MASTER_PASSWORD)
    master_port = servers.start("--save", "", "--appendonly", "no", *password)
    # Priority 0 keeps the replica from being promoted until the test allows it.
    replica_port = servers.start(
        "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(master_port),
        "--replica-priority", "0", *password,
    )
    sentinel_config = "\n".join(
        [
            f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {master_port} 2",
            f"sentinel auth-pass {SERVICE_NAME} {MASTER_PASSWORD}",
            f"sentinel down-after-milliseconds {SERVICE_NAME} 500",
            # An aborted failover is retried after twice this time.
            f"sentinel failover-timeout {SERVICE_NAME} 1000",
            f"sentinel parallel-syncs {SERVICE_NAME} 1",
            # Sentinels authenticate to each other with their own requirepass.
            f"requirepass {SENTINEL_PASSWORD}",
            "",
        ]
    )
    sentinel_ports = tuple(servers.start(config_text=sentinel_config) for _ in range(3))
    group = SentinelGroup(master_port, replica_port, sentinel_ports)

    def sentinels_see_everyone() -> bool:
        for port in sentinel_ports:
            with group.sentinel(port) as client:
                state = client.sentinel_master(SERVICE_NAME)
            if state["num-slaves"] != 1 or state["num-other-sentinels"] != 2:
                return False
        return True

    wait_until("the Sentinels to find the replica and each other", sentinels_see_everyone)
    return group


def assert_ip_limit_applies(daemon: Daemon) -> str:
    """Send one request over the per-IP limit from a new address; return that address."""
    client_address = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    headers = {"X-Forwarded-For": client_address}
    statuses = [httpx.get(f"{daemon.base_url}/v1/agents", headers=headers).status_code for _ in range(IP_LIMIT + 1)]
    assert statuses[:IP_LIMIT] == [401] * IP_LIMIT
    assert statuses[IP_LIMIT] == 429
    return client_address


def master_keys(port: int, pattern: str) -> list[bytes]:
    with redis.Redis(host="127.0.0.1", port=port, password=MASTER_PASSWORD, socket_timeout=1) as client:
        keys: list[bytes] = client.keys(pattern)
        return keys


@needs_redis_server
def test_sentinel_daemon_follows_failover(backends: Backends, database_url: str, servers: RedisServers) -> None:
    group = start_sentinel_group(servers)
    daemon = new_daemon(backends, database_url, redis_url=group.url, **LIMITS_ON)
    daemon.start()
    try:
        assert httpx.get(f"{daemon.base_url}/health").status_code == 200
        first_address = assert_ip_limit_applies(daemon)
        assert len(master_keys(group.master_port, f"ratelimit:{{ip:{first_address}}}:*")) == 1

        servers.kill(group.master_port)
        outage = httpx.get(f"{daemon.base_url}/health")
        assert outage.status_code == 503
        assert outage.json()["failing"] == ["redis"]

        with redis.Redis(host="127.0.0.1", port=group.replica_port, password=MASTER_PASSWORD) as replica:
            replica.config_set("replica-priority", 100)
        wait_until("the Sentinels to promote the replica", lambda: group.master_port_reported() == group.replica_port)
        wait_until("/health to return 200", lambda: httpx.get(f"{daemon.base_url}/health").status_code == 200)

        second_address = assert_ip_limit_applies(daemon)
        assert len(master_keys(group.replica_port, f"ratelimit:{{ip:{second_address}}}:*")) == 1
        assert daemon.process is not None
        assert daemon.process.poll() is None
    finally:
        stop_quietly(daemon)
    output = daemon.output()
    assert MASTER_PASSWORD not in output
    assert SENTINEL_PASSWORD not in output
    warnings = [line for line in daemon.json_lines() if line.get("msg") == "redis.unavailable"]
    assert len(warnings) == 1


@dataclass(frozen=True)
class Cluster:
    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        # Two of the three nodes: the client discovers the third.
        return f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"


def start_cluster(servers: RedisServers) -> Cluster:
    """Start three masters and split the 16384 slots among them, as redis-cli --cluster create does."""
    ports = tuple(
        servers.start(
            "--save", "", "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-node-timeout", "5000",
            cluster_node=True,
        )
        for _ in range(3)
    )
    slot_ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    for index, (port, (first, last)) in enumerate(zip(ports, slot_ranges)):
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
            client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
            # Distinct epochs, so the nodes need no collision round to agree on slot owners.
            client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
    with redis.Redis(host="127.0.0.1", port=ports[0], socket_timeout=2) as client:
        for port in ports[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", port)

    def cluster_is_ok() -> bool:
        for port in ports:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
                info = client.execute_command("CLUSTER INFO")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != 3:
                return False
        return True

    wait_until("the cluster to reach state ok", cluster_is_ok)
    return Cluster(ports)


@needs_redis_server
def test_cluster_daemon_health_and_limit(backends: Backends, database_url: str, servers: RedisServers) -> None:
    cluster = start_cluster(servers)
    daemon = new_daemon(backends, database_url, redis_url=cluster.url, **LIMITS_ON)
    daemon.start()
    try:
        assert httpx.get(f"{daemon.base_url}/health").status_code == 200
        address = assert_ip_limit_applies(daemon)
    finally:
        stop_quietly(daemon)
    with redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0], socket_timeout=2) as client:
        keys = client.keys(f"ratelimit:{{ip:{address}}}:*", target_nodes=redis.RedisCluster.ALL_NODES)
    assert len(keys) == 1
    warnings = [line for line in daemon.json_lines() if line.get("msg") == "redis.unavailable"]
    assert warnings == []


@needs_redis_server
async def test_cluster_store_keys_across_slots(servers: RedisServers) -> None:
    cluster = await trio.to_thread.run_sync(start_cluster, servers)
    token_key = revoked_token_key(f"tok_{uuid.uuid4().hex}")
    grant_key = revoked_grant_key(f"grnt_{uuid.uuid4().hex}")
    assert key_slot(token_key.encode()) != key_slot(grant_key.encode())

    async with trio_asyncio.open_loop():
        store = RedisStore(cluster.url, timeout_seconds=1)
        try:
            await store.ping()
            assert not await store.exists_any(token_key, grant_key)
            await store.set_with_ttl(grant_key, "1", 60)
            assert await store.exists_any(token_key, grant_key)
            assert await store.get(grant_key) == b"1"

            subject = f"dev_{uuid.uuid4().hex}"
            decisions = [await store.count_request("developer", subject, 2, 60_000, 1_000) for _ in range(3)]
            assert decisions == [(True, 1), (True, 2), (False, 2)]
            assert store.available

            await trio.to_thread.run_sync(servers.stop_all)
            with pytest.raises(RedisUnavailable):
                await store.ping()
            assert not store.available
        finally:
            await store.close()
