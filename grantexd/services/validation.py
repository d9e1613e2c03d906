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


def _is_private_host(hostname: str) -> bool:
    if hostname in ("localhost",) or hostname.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local or address.is_unspecified


def redirect_uri_problem(value: str, production: bool) -> str | None:
    """Return why ``value`` is not an acceptable redirect URI, or None if it is."""
    if not 1 <= len(value) <= 2048:
        return "URL must be absolute and valid"
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        _ = parts.port
    except ValueError:
        return "URL must be absolute and valid"
    if not parts.scheme or not parts.netloc:
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
