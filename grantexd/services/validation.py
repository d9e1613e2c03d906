"""Field checks shared by several services; each raises BadRequest with the protocol's message."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from grantexd.errors import BadRequest

MAX_SCOPES = 100
MAX_SCOPE_LENGTH = 256


def check_scope_list(value: object, allow_empty: bool = True) -> list[str]:
    """Return the scopes, or raise ``Invalid scope format`` / ``Too many scopes (max 100)``."""
    if not isinstance(value, list):
        raise BadRequest("Invalid scope format")
    for scope in value:
        if not isinstance(scope, str) or not 0 < len(scope) <= MAX_SCOPE_LENGTH or not scope.strip():
            raise BadRequest("Invalid scope format")
    if len(value) > MAX_SCOPES:
        raise BadRequest(f"Too many scopes (max {MAX_SCOPES})")
    if not allow_empty and not value:
        raise BadRequest("Invalid scope format")
    return list(value)


# Characters that may not appear in a URL host (the WHATWG URL standard's forbidden host
# and domain code points), so a browser would reject the URL that Python's urlsplit accepts.
_FORBIDDEN_HOST_CHARACTERS = frozenset(" #%/:<>?@[\\]^|\x7f") | frozenset(chr(code) for code in range(0x20))


def _ipv4_part(text: str) -> int | None:
    """Parse one dotted part of a WHATWG IPv4 host: decimal, ``0x`` hex or ``0`` octal."""
    if text[:2].lower() == "0x":
        digits, base = text[2:], 16
    elif len(text) > 1 and text.startswith("0"):
        digits, base = text[1:], 8
    else:
        digits, base = text, 10
    if digits == "":
        return 0 if base == 16 else None
    allowed = "0123456789abcdefABCDEF"[: 22 if base == 16 else base]
    if len(digits) > 32 or any(character not in allowed for character in digits):
        return None
    return int(digits, base)


def _dotted_parts(hostname: str) -> list[str]:
    parts = hostname.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    return parts


def _ends_in_number(hostname: str) -> bool:
    """Tell whether a browser parses ``hostname`` as an IPv4 address rather than a domain."""
    return _ipv4_part(_dotted_parts(hostname)[-1]) is not None


def _parse_ipv4(hostname: str) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address a browser reads from a numeric host, or None if it is invalid.

    Browsers accept ``2130706433``, ``0x7f.1`` and ``0177.0.0.1`` as 127.0.0.1, so those
    forms must not slip past the private-host check.
    """
    parts = _dotted_parts(hostname)
    if len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _ipv4_part(part)
        if number is None:
            return None
        numbers.append(number)
    if any(number > 255 for number in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _is_private_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_private or address.is_loopback or address.is_link_local or address.is_unspecified


def _is_private_host(hostname: str) -> bool:
    name = hostname.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    if ":" in name:
        return _is_private_address(ipaddress.IPv6Address(name))
    if not _ends_in_number(name):
        return False
    address = _parse_ipv4(name)
    return address is not None and _is_private_address(address)


def _host_is_valid(hostname: str) -> bool:
    if ":" in hostname:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return False
        return True
    if any(character in _FORBIDDEN_HOST_CHARACTERS for character in hostname):
        return False
    return not _ends_in_number(hostname) or _parse_ipv4(hostname) is not None


def redirect_uri_problem(value: str, production: bool) -> str | None:
    """Return why ``value`` is not an acceptable redirect URI, or None if it is.

    The checks run in the order the protocol lists the reasons: a parseable absolute URL,
    no credentials, a host, an http(s) scheme, then the production-only rules.
    """
    if not 1 <= len(value) <= 2048:
        return "URL must be absolute and valid"
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        _ = parts.port
    except ValueError:
        return "URL must be absolute and valid"
    if not parts.scheme:
        return "URL must be absolute and valid"
    if parts.scheme in ("https", "http") and not hostname:
        # Browsers cannot parse an http(s) URL without a host at all.
        return "URL must be absolute and valid"
    if hostname and not _host_is_valid(hostname):
        return "URL must be absolute and valid"
    if parts.username is not None or parts.password is not None:
        return "URL must not contain embedded credentials"
    if not hostname:
        return "URL must include a hostname"
    if parts.scheme not in ("https", "http"):
        return "URL protocol must be one of: https:, http:"
    if production and parts.scheme == "http":
        return "HTTP URLs are disabled; use HTTPS"
    if production and _is_private_host(hostname):
        return "Private, loopback, and link-local hosts are not allowed"
    return None


def check_redirect_uri_list(value: object, production: bool) -> list[str]:
    if not isinstance(value, list) or len(value) > 20:
        raise BadRequest("redirectUris must be an array of at most 20 absolute http(s) URLs")
    for item in value:
        if not isinstance(item, str):
            raise BadRequest("redirectUris must be an array of at most 20 absolute http(s) URLs")
        problem = redirect_uri_problem(item, production)
        if problem is not None:
            raise BadRequest(f"Invalid redirectUris entry {item[:100]!r}: {problem}")
    return list(value)
