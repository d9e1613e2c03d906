"""The daemon's configuration, parsed once from the environment.

``load_config`` reads every variable, collects every problem, and raises one ``ConfigError``
that names each bad variable, so an operator fixes the unit file in one pass. Nothing else in
the package reads settings from ``os.environ``. ``sdnotify`` reads only the variables that
systemd sets for it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from grantexd.crypto.keys import load_signing_key, parse_key_encryption_key
from grantexd.store.redis_url import CLUSTER_SCHEME, SENTINEL_SCHEME, parse_cluster_url, parse_sentinel_url

Environment = Literal["development", "production"]
LogLevel = Literal["debug", "info", "warn", "error"]


class Secret:
    """A string that never shows its value in ``repr``, ``str`` or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class ConfigError(Exception):
    """One or more variables are missing or invalid; ``problems`` maps each name to its fault."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        summary = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        super().__init__(f"invalid configuration: {summary}")


@dataclass(frozen=True)
class TrustProxy:
    """The proxies trusted to set ``X-Forwarded-For``: a hop count, or a list of networks."""

    hops: int = 0
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.hops > 0 or bool(self.networks)


@dataclass(frozen=True)
class Config:
    database_url: Secret
    redis_url: Secret
    rsa_private_key_pem: Secret | None
    auto_generate_keys: bool
    key_encryption_key: Secret | None
    keys_refresh_interval_seconds: float
    ed25519_private_key_pem: Secret | None
    jwt_issuer: str
    public_base_url: str
    host: str
    port: int
    environment: Environment
    log_level: LogLevel
    seed_api_key: Secret | None
    seed_sandbox_key: Secret | None
    otel_exporter_otlp_endpoint: str | None
    max_delegation_depth: int
    trust_proxy: TrustProxy
    cors_allowed_origins: tuple[str, ...]
    db_pool_max: int
    db_pool_min: int
    db_connect_timeout_seconds: float
    db_command_timeout_seconds: float
    db_pool_idle_timeout_seconds: float
    redis_timeout_seconds: float
    health_timeout_seconds: float
    shutdown_grace_seconds: float
    metrics_api_key: Secret | None
    rate_limit_ip_per_minute: int
    rate_limit_developer_per_minute: int
    rate_limit_authorize_per_minute: int
    webhook_allow_private_hosts: bool
    webhook_allow_insecure_urls: bool
    # Delay before the first retry of a failed webhook attempt; each later retry doubles it.
    webhook_retry_delay_seconds: float = 30.0
    # Time limit of one webhook attempt, DNS resolution included.
    webhook_timeout_seconds: float = 10.0
    # How long the listener keeps accepting after shutdown begins, answering /health/ready with
    # 503 draining, so a load balancer stops sending traffic before connections are refused.
    shutdown_drain_delay_seconds: float = 0.0
    anomaly_interval_seconds: float = 3600.0
    # UTC hours [start, end) that count as off hours; the range wraps past midnight when start > end.
    anomaly_off_hours: tuple[int, int] = (0, 6)

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Reader:
    """Reads variables from one environment mapping and records each problem by name."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: dict[str, str] = {}

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def fail(self, name: str, problem: str) -> None:
        self.problems.setdefault(name, problem)

    def string(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.fail(name, f"must be true or false, got {value!r}")
        return default

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.fail(name, f"must be a whole number from {minimum} to {maximum}, got {value!r}")
            return default
        if not minimum <= number <= maximum:
            self.fail(name, f"must be from {minimum} to {maximum}, got {number}")
            return default
        return number

    def seconds(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        units = {"s": 1, "m": 60, "h": 3600}
        multiplier = units.get(value[-1], 1) if value else 1
        text = value[:-1] if value and value[-1] in units else value
        try:
            number = float(text) * multiplier
        except ValueError:
            self.fail(name, f"must be a number of seconds such as 30, 2.5, 10m or 1h, got {value!r}")
            return default
        if not minimum <= number <= maximum:
            self.fail(name, f"must be from {minimum:g} to {maximum:g} seconds, got {value!r}")
            return default
        return number


def _parse_off_hours(reader: _Reader) -> tuple[int, int]:
    value = reader.raw("ANOMALY_OFF_HOURS")
    if value is None:
        return (0, 6)
    match = re.fullmatch(r"([0-9]{1,2})-([0-9]{1,2})", value)
    if match is None or not all(0 <= int(hour) <= 24 for hour in match.groups()) or match[1] == match[2]:
        reader.fail("ANOMALY_OFF_HOURS", f"must be two different UTC hours from 0 to 24 such as 22-6, got {value!r}")
        return (0, 6)
    return (int(match[1]), int(match[2]))


def _split_url(reader: _Reader, name: str, value: str, *, secret: bool) -> SplitResult | None:
    """Split ``value``, recording a problem for ``name`` if the URL or any of its ports is malformed.

    A secret URL (it may carry a password) is never quoted in the problem.
    """
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or not _has_valid_ports(parts.netloc):
        quoted_value = "" if secret else f", got {value!r}"
        reader.fail(name, f"is not a valid URL or has an invalid port{quoted_value}")
        return None
    return parts


def _has_valid_ports(netloc: str) -> bool:
    """Check every port in a netloc such as ``user:password@host1:5432,host2:5433``.

    PostgreSQL and Redis Sentinel URLs may list several hosts, which ``SplitResult.port``
    cannot parse, so each host is checked here.
    """
    hosts = netloc.rpartition("@")[2]
    for host in hosts.split(","):
        if host.startswith("["):
            # In an IPv6 literal such as [::1]:5432, the port follows the closing bracket.
            host = host.partition("]")[2]
        port = host.rpartition(":")[2] if ":" in host else ""
        if port and not (port.isdigit() and int(port) <= 65535):
            return False
    return True


def _parse_base_url(reader: _Reader, name: str, value: str) -> str:
    parts = _split_url(reader, name, value, secret=False)
    if parts is None:
        return value
    if parts.scheme not in ("http", "https") or not parts.hostname:
        reader.fail(name, f"must be an absolute http or https URL, got {value!r}")
        return value
    if parts.query or parts.fragment:
        reader.fail(name, "must not contain a query or fragment")
    # Clients derive the expected issuer from the JWKS URL, which never has a trailing slash.
    return value.rstrip("/")


def _parse_database_url(reader: _Reader) -> Secret:
    value = reader.raw("DATABASE_URL")
    if value is None:
        reader.fail("DATABASE_URL", "is required, for example postgresql://user:password@host:5432/grantex")
        return Secret("")
    parts = _split_url(reader, "DATABASE_URL", value, secret=True)
    if parts is None:
        return Secret(value)
    if parts.scheme not in ("postgres", "postgresql"):
        reader.fail("DATABASE_URL", "must start with postgresql:// or postgres://")
    ssl_modes = parse_qs(parts.query).get("sslmode")
    if ssl_modes and ssl_modes[-1] not in _SSL_MODES:
        reader.fail(
            "DATABASE_URL",
            f"sslmode must be disable, allow, prefer, require, verify-ca or verify-full, "
            f"got {ssl_modes[-1]!r}",
        )
    return Secret(value)


_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _parse_redis_url(reader: _Reader) -> Secret:
    value = reader.raw("REDIS_URL")
    if value is None:
        reader.fail("REDIS_URL", "is required, for example redis://127.0.0.1:6379/0")
        return Secret("")
    parts = _split_url(reader, "REDIS_URL", value, secret=True)
    if parts is None:
        return Secret(value)
    try:
        if parts.scheme == SENTINEL_SCHEME:
            parse_sentinel_url(value)
        elif parts.scheme == CLUSTER_SCHEME:
            parse_cluster_url(value)
        elif parts.scheme not in ("redis", "rediss", "unix"):
            reader.fail(
                "REDIS_URL", "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
            )
    except ValueError as exc:
        # The parsers' messages never quote the URL, which may carry a password.
        reader.fail("REDIS_URL", str(exc))
    return Secret(value)


def _read_pem(reader: _Reader, name: str, credential: str) -> Secret | None:
    """Read a PEM from the variable's value, from a file it names, or from a systemd credential."""
    value = reader.raw(name)
    if value is None:
        credentials_directory = reader.raw("CREDENTIALS_DIRECTORY")
        if credentials_directory is not None:
            path = Path(credentials_directory) / credential
            if path.is_file():
                return Secret(path.read_text())
        return None
    if value.startswith("-----BEGIN"):
        return Secret(value.replace("\\n", "\n"))
    path = Path(value)
    if path.is_file():
        try:
            return Secret(path.read_text())
        except OSError as exc:
            reader.fail(name, f"names the file {value!r}, which cannot be read: {exc.strerror}")
            return None
    reader.fail(name, "must be a PEM key (starting with -----BEGIN) or the path of a readable PEM file")
    return None


def _read_key_encryption_key(reader: _Reader) -> Secret | None:
    """Read KEY_ENCRYPTION_KEY from its value, a file it names, or the systemd credential."""
    value = reader.raw("KEY_ENCRYPTION_KEY")
    if value is None:
        credentials_directory = reader.raw("CREDENTIALS_DIRECTORY")
        path = Path(credentials_directory) / "key_encryption_key" if credentials_directory else None
        if path is None or not path.is_file():
            return None
        value = path.read_text().strip()
    elif Path(value).is_file():
        value = Path(value).read_text().strip()
    try:
        parse_key_encryption_key(value)
    except ValueError as exc:
        reader.fail("KEY_ENCRYPTION_KEY", str(exc))
        return None
    return Secret(value)


def _parse_trust_proxy(reader: _Reader) -> TrustProxy:
    value = reader.raw("TRUST_PROXY")
    if value is None or value.lower() in ("off", "false", "0"):
        return TrustProxy()
    if value.isdigit():
        hops = int(value)
        if hops > 10:
            reader.fail("TRUST_PROXY", f"hop count must be from 0 to 10, got {hops}")
            return TrustProxy()
        return TrustProxy(hops=hops)
    networks = []
    for item in value.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            reader.fail(
                "TRUST_PROXY",
                f"must be a hop count or a comma-separated list of CIDR networks, got {item.strip()!r}",
            )
            return TrustProxy()
    return TrustProxy(networks=tuple(networks))


def _is_ed25519_key(pem: Secret) -> bool:
    try:
        key = serialization.load_pem_private_key(pem.reveal().encode(), password=None)
    except (ValueError, TypeError):
        return False
    return isinstance(key, ed25519.Ed25519PrivateKey)


_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def _parse_origins(reader: _Reader) -> tuple[str, ...]:
    value = reader.raw("CORS_ALLOWED_ORIGINS")
    if value is None:
        return ()
    origins = tuple(item.strip() for item in value.split(",") if item.strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            reader.fail(
                "CORS_ALLOWED_ORIGINS",
                f"each origin must be scheme://host[:port] with no path, got {origin!r}",
            )
    return origins


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate the configuration; raise ConfigError naming every bad variable."""
    reader = _Reader(os.environ if environ is None else environ)

    environment_text = reader.string("GRANTEX_ENV", "development").lower()
    if environment_text not in ("development", "production"):
        reader.fail("GRANTEX_ENV", f"must be development or production, got {environment_text!r}")
        environment_text = "development"
    environment: Environment = "production" if environment_text == "production" else "development"
    production = environment == "production"

    log_level_text = reader.string("LOG_LEVEL", "info").lower()
    if log_level_text == "warning":
        log_level_text = "warn"
    if log_level_text not in ("debug", "info", "warn", "error"):
        reader.fail("LOG_LEVEL", f"must be debug, info, warn or error, got {log_level_text!r}")
        log_level_text = "info"

    database_url = _parse_database_url(reader)
    redis_url = _parse_redis_url(reader)

    auto_generate_keys = reader.boolean("AUTO_GENERATE_KEYS", False)
    rsa_private_key = _read_pem(reader, "RSA_PRIVATE_KEY", "rsa_private_key")
    if auto_generate_keys and production:
        reader.fail("AUTO_GENERATE_KEYS", "is refused when GRANTEX_ENV=production; set RSA_PRIVATE_KEY")
    key_encryption_key = _read_key_encryption_key(reader)
    if (
        rsa_private_key is None
        and key_encryption_key is None
        and not auto_generate_keys
        and "RSA_PRIVATE_KEY" not in reader.problems
        and "KEY_ENCRYPTION_KEY" not in reader.problems
    ):
        reader.fail(
            "RSA_PRIVATE_KEY",
            "is required unless KEY_ENCRYPTION_KEY is set (keys kept in PostgreSQL) or "
            "AUTO_GENERATE_KEYS=true (development only); give a PEM or a file path",
        )
    if rsa_private_key is not None:
        try:
            load_signing_key(rsa_private_key.reveal())
        except ValueError as exc:
            reader.fail("RSA_PRIVATE_KEY", f"is not usable: {exc}")
    ed25519_private_key = _read_pem(reader, "ED25519_PRIVATE_KEY", "ed25519_private_key")
    if ed25519_private_key is not None and not _is_ed25519_key(ed25519_private_key):
        reader.fail("ED25519_PRIVATE_KEY", "must be an unencrypted PEM Ed25519 private key")

    jwt_issuer = _parse_base_url(reader, "JWT_ISSUER", reader.string("JWT_ISSUER", "https://grantex.dev"))
    # Unset, it inherits JWT_ISSUER without being checked again, so a bad issuer is reported once.
    public_base_url_text = reader.raw("PUBLIC_BASE_URL")
    public_base_url = (
        jwt_issuer
        if public_base_url_text is None
        else _parse_base_url(reader, "PUBLIC_BASE_URL", public_base_url_text)
    )

    seed_api_key = reader.raw("SEED_API_KEY")
    seed_sandbox_key = reader.raw("SEED_SANDBOX_KEY")
    for name, value in (("SEED_API_KEY", seed_api_key), ("SEED_SANDBOX_KEY", seed_sandbox_key)):
        if value is None:
            continue
        if production:
            reader.fail(name, "is refused when GRANTEX_ENV=production")
        elif not 16 <= len(value) <= 512:
            reader.fail(name, f"must be 16 to 512 characters, got {len(value)}")
    if seed_api_key is not None and seed_api_key == seed_sandbox_key:
        reader.fail("SEED_SANDBOX_KEY", "must differ from SEED_API_KEY")

    otel_endpoint = reader.raw("OTEL_EXPORTER_OTLP_ENDPOINT")
    if otel_endpoint is not None:
        _parse_base_url(reader, "OTEL_EXPORTER_OTLP_ENDPOINT", otel_endpoint)

    metrics_api_key = reader.raw("METRICS_API_KEY")
    if metrics_api_key is not None and len(metrics_api_key) < 16:
        reader.fail("METRICS_API_KEY", "must be at least 16 characters")

    db_pool_max = reader.integer("DB_POOL_MAX", 10, 1, 1000)
    db_pool_min = reader.integer("DB_POOL_MIN", 0, 0, 1000)
    if db_pool_min > db_pool_max:
        reader.fail("DB_POOL_MIN", f"must not exceed DB_POOL_MAX ({db_pool_max}), got {db_pool_min}")

    config = Config(
        database_url=database_url,
        redis_url=redis_url,
        rsa_private_key_pem=rsa_private_key,
        auto_generate_keys=auto_generate_keys,
        key_encryption_key=key_encryption_key,
        keys_refresh_interval_seconds=reader.seconds("KEYS_REFRESH_INTERVAL", 60.0, 1.0, 3600.0),
        ed25519_private_key_pem=ed25519_private_key,
        jwt_issuer=jwt_issuer,
        public_base_url=public_base_url,
        host=reader.string("HOST", "0.0.0.0"),
        port=reader.integer("PORT", 3001, 0, 65535),
        environment=environment,
        log_level=log_level_text,  # type: ignore[arg-type]
        seed_api_key=Secret(seed_api_key) if seed_api_key else None,
        seed_sandbox_key=Secret(seed_sandbox_key) if seed_sandbox_key else None,
        otel_exporter_otlp_endpoint=otel_endpoint,
        max_delegation_depth=reader.integer("MAX_DELEGATION_DEPTH", 3, 1, 10),
        trust_proxy=_parse_trust_proxy(reader),
        cors_allowed_origins=_parse_origins(reader),
        db_pool_max=db_pool_max,
        db_pool_min=db_pool_min,
        db_connect_timeout_seconds=reader.seconds("DB_CONNECT_TIMEOUT", 30.0, 0.1, 600.0),
        db_command_timeout_seconds=reader.seconds("DB_COMMAND_TIMEOUT", 30.0, 0.1, 3600.0),
        db_pool_idle_timeout_seconds=reader.seconds("DB_POOL_IDLE_TIMEOUT", 0.0, 0.0, 86400.0),
        redis_timeout_seconds=reader.seconds("REDIS_TIMEOUT", 2.0, 0.05, 60.0),
        health_timeout_seconds=reader.seconds("HEALTH_TIMEOUT", 2.0, 0.1, 60.0),
        shutdown_grace_seconds=reader.seconds("SHUTDOWN_GRACE_PERIOD", 30.0, 0.0, 3600.0),
        metrics_api_key=Secret(metrics_api_key) if metrics_api_key else None,
        rate_limit_ip_per_minute=reader.integer("RATE_LIMIT_IP_PER_MINUTE", 5000, 0, 10_000_000),
        rate_limit_developer_per_minute=reader.integer(
            "RATE_LIMIT_DEVELOPER_PER_MINUTE", 2000, 0, 10_000_000
        ),
        rate_limit_authorize_per_minute=reader.integer(
            "RATE_LIMIT_AUTHORIZE_PER_MINUTE", 60, 0, 10_000_000
        ),
        webhook_allow_private_hosts=reader.boolean("WEBHOOK_ALLOW_PRIVATE_HOSTS", not production),
        webhook_allow_insecure_urls=reader.boolean("WEBHOOK_ALLOW_INSECURE_URLS", not production),
        webhook_retry_delay_seconds=reader.seconds("WEBHOOK_RETRY_DELAY", 30.0, 0.01, 3600.0),
        webhook_timeout_seconds=reader.seconds("WEBHOOK_TIMEOUT", 10.0, 0.1, 60.0),
        shutdown_drain_delay_seconds=reader.seconds("SHUTDOWN_DRAIN_DELAY", 0.0, 0.0, 300.0),
        anomaly_interval_seconds=reader.seconds("ANOMALY_INTERVAL", 3600.0, 1.0, 7 * 86400.0),
        anomaly_off_hours=_parse_off_hours(reader),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return config
