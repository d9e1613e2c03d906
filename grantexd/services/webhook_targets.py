"""Webhook target checks, run at registration and again before every attempt.

In production (``WEBHOOK_ALLOW_PRIVATE_HOSTS=false``) a target is rejected when any address
its host resolves to is not a public unicast address: loopback, private, link-local, CGNAT
(100.64.0.0/10), unspecified, multicast, reserved, documentation ranges, or a cloud metadata
address. IPv6 forms that embed an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) are judged
by the embedded address. Every resolved address is checked, and the sender connects to a
checked address, so a DNS answer cannot switch the target between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import trio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048

# Cloud metadata services that listen on addresses the ranges below do not all cover
# (168.63.129.16 is Azure's, a public address).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "169.254.170.2", "168.63.129.16", "100.100.100.200", "fd00:ec2::254")
)
_NAT64_NETWORKS = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class TargetRejected(Exception):
    """The URL, or an address its host resolves to, may not receive webhooks; the message gives the reason."""


@dataclass(frozen=True)
class TargetPolicy:
    allow_private_hosts: bool
    allow_insecure_urls: bool


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    for network in _NAT64_NETWORKS:
        if address in network:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_address_kind(address: IPAddress) -> str | None:
    """Return what kind of non-public address ``address`` is, such as "a loopback address", or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind = forbidden_address_kind(embedded)
            return None if kind is None else f"{kind} ({embedded} embedded in IPv6)"
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.IPv4Network("100.64.0.0/10"):
        return "a carrier-grade NAT address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a reserved address"
    return None


def url_problem(url: object, policy: TargetPolicy) -> str | None:
    """Return why ``url`` is not an acceptable webhook URL, or None; no DNS lookup is made."""
    if not isinstance(url, str) or not url:
        return "url is required"
    if len(url) > MAX_URL_LENGTH:
        return f"url must be at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "url must be an absolute http(s) URL with a valid host and port"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "url must be an absolute http(s) URL such as https://example.com/webhooks"
    if parts.username is not None or parts.password is not None:
        return "url must not contain credentials"
    if parts.fragment:
        return "url must not contain a fragment"
    if any(character.isspace() or ord(character) < 0x20 for character in url):
        return "url must not contain whitespace or control characters"
    if not _host_is_valid(parts.hostname):
        return f"url host {parts.hostname!r} is not a valid host name or IP address"
    if parts.scheme == "http" and not policy.allow_insecure_urls:
        return "url must use https"
    return None


def _host_is_valid(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        pass
    else:
        return True
    labels = hostname.rstrip(".").split(".")
    return len(hostname) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL's parts and the addresses its host resolved to, in resolver order."""

    parts: SplitResult
    hostname: str
    port: int
    addresses: tuple[IPAddress, ...]


async def resolve_target(url: str, policy: TargetPolicy) -> ResolvedTarget:
    """Resolve the URL's host and check every address against ``policy``.

    Raises TargetRejected when the scheme is not allowed, the host does not resolve, or any
    address is rejected. The caller bounds the time spent resolving.
    """
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    if parts.scheme == "http" and not policy.allow_insecure_urls:
        raise TargetRejected("http: URLs are not allowed; use https")
    if parts.scheme not in ("https", "http"):
        raise TargetRejected(f"the URL scheme {parts.scheme!r} is not http or https")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        # Bytes go to the system resolver as they are; registration allows only ASCII host names.
        results = await trio.socket.getaddrinfo(hostname.encode("ascii"), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRejected(f"DNS resolution of {hostname!r} failed: {exc}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _protocol, _name, socket_address in results:
        # An IPv6 socket address may carry a zone such as "%eth0", which is not part of the address.
        address = ipaddress.ip_address(str(socket_address[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise TargetRejected(f"DNS resolution of {hostname!r} returned no addresses")
    if not policy.allow_private_hosts:
        for address in addresses:
            kind = forbidden_address_kind(address)
            if kind is not None:
                raise TargetRejected(
                    f"{hostname!r} resolves to {address}, which is {kind}; webhook targets must be public addresses"
                )
    return ResolvedTarget(parts=parts, hostname=hostname, port=port, addresses=tuple(addresses))
