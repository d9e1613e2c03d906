"""Prefixed ULID identifiers such as ``grnt_01J...``.

A ULID is 26 characters of Crockford base32: a 48-bit millisecond timestamp followed by 80
random bits, so ids sort by creation time to the millisecond.
"""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_ms: int | None = None) -> str:
    timestamp = int(time.time() * 1000) if now_ms is None else now_ms
    value = (timestamp << 80) | secrets.randbits(80)
    characters = []
    for _ in range(26):
        characters.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(characters))


def new_id(prefix: str) -> str:
    """Return ``<prefix>_<ULID>``, the id format of every protocol entity."""
    return f"{prefix}_{new_ulid()}"
