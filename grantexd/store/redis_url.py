"""Parse the Redis Sentinel and Redis Cluster forms of ``REDIS_URL``.

redis-py parses ``redis://``, ``rediss://`` and ``unix://`` itself but has no URL form for a
list of Sentinels or cluster nodes, so grantexd accepts these two:

``redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db][?query]``
    The hosts are Sentinels (default port 26379). ``service_name`` is the master name the
    Sentinels monitor, and ``db`` the database index (default 0). The username and password
    authenticate to the master and its replicas. Sentinels that require their own credentials
    take them from the ``sentinel_username`` and ``sentinel_password`` query parameters.
    Without them, grantexd connects to the Sentinels without authenticating.

``redis+cluster://[[username]:password@]host[:port][,host[:port]...]``
    The hosts are startup nodes of a Redis Cluster (default port 6379). One reachable node is
    enough, because the client discovers the others. A cluster has only database 0, so the path
    is empty, ``/`` or ``/0``, and no query parameter is accepted.

An IPv6 host goes in brackets (``[::1]:26379``). Reserved characters in the username, password
and service name are percent-encoded. The parsers raise ``ValueError`` with a message that
never quotes the URL or any part of it, because a malformed URL may put a password anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"

DEFAULT_SENTINEL_PORT = 26379
DEFAULT_CLUSTER_PORT = 6379

_SENTINEL_QUERY_PARAMETERS = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL, whose passwords ``repr`` leaves out."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    username: str | None
    password: str | None = field(repr=False)
    sentinel_username: str | None
    sentinel_password: str | None = field(repr=False)


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL, whose password ``repr`` leaves out."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None = field(repr=False)


def parse_sentinel_url(url: str) -> SentinelURL:
    parts = _split(url, SENTINEL_SCHEME)
    username, password = _parse_credentials(parts.netloc)
    sentinels = _parse_hosts(parts.netloc, DEFAULT_SENTINEL_PORT, "redis+sentinel://127.0.0.1:26379/mymaster")

    # The path is "/service_name" or "/service_name/db".
    segments = parts.path.split("/")[1:]
    if not segments or not segments[0]:
        raise ValueError(
            "must name the master after the Sentinel hosts, as in redis+sentinel://127.0.0.1:26379/mymaster"
        )
    if len(segments) > 2:
        raise ValueError(
            "must have at most a master name and a database number in its path, "
            "as in redis+sentinel://127.0.0.1:26379/mymaster/0"
        )
    db = 0
    if len(segments) == 2 and segments[1]:
        db = _parse_db(segments[1])

    # parse_qsl decodes the values, so a "+" in a password must be written as %2B.
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _SENTINEL_QUERY_PARAMETERS:
            raise ValueError(
                "has an unknown query parameter, but a Sentinel URL accepts only sentinel_username "
                "and sentinel_password"
            )
        query[name] = value
    return SentinelURL(
        sentinels=sentinels,
        service_name=unquote(segments[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def parse_cluster_url(url: str) -> ClusterURL:
    parts = _split(url, CLUSTER_SCHEME)
    username, password = _parse_credentials(parts.netloc)
    nodes = _parse_hosts(parts.netloc, DEFAULT_CLUSTER_PORT, "redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("must not name a database other than 0, because Redis Cluster has only database 0")
    if parts.query:
        raise ValueError("must not have query parameters with redis+cluster://")
    return ClusterURL(nodes=nodes, username=username, password=password)


def _split(url: str, scheme: str) -> SplitResult:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme != scheme:
        raise ValueError(f"must start with {scheme}://")
    if parts.fragment:
        raise ValueError("must not contain a fragment")
    return parts


def _parse_credentials(netloc: str) -> tuple[str | None, str | None]:
    """Return the username and password, as ``urlsplit`` and redis-py's ``from_url`` read them."""
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None, None
    username, _, password = userinfo.partition(":")
    return unquote(username) or None, unquote(password) or None


def _parse_hosts(netloc: str, default_port: int, example: str) -> tuple[tuple[str, int], ...]:
    host_list = netloc.rpartition("@")[2]
    if not host_list:
        raise ValueError(f"must list at least one host, as in {example}")
    hosts = []
    for entry in host_list.split(","):
        hosts.append(_parse_host(entry, default_port))
    return tuple(hosts)


def _parse_host(entry: str, default_port: int) -> tuple[str, int]:
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket:
            raise ValueError("has an IPv6 address without its closing bracket ]")
        if rest and not rest.startswith(":"):
            raise ValueError("has text after an IPv6 address, where only :port may follow the closing bracket")
        has_port, port_text = bool(rest), rest[1:]
    else:
        host, colon, port_text = entry.partition(":")
        has_port = bool(colon)
        if ":" in port_text:
            raise ValueError("has an IPv6 address without brackets, which must be written as [address]:port")
    if not host:
        raise ValueError("has an empty host in its host list")
    if not has_port:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ValueError("has an invalid port in its host list, expected a number from 1 to 65535")
    return host, int(port_text)


def _parse_db(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(
            "must end with a database number after the master name, as in redis+sentinel://127.0.0.1:26379/mymaster/0"
        )
    return int(text)
