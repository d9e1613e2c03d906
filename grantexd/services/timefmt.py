"""Wire formats for time: ISO-8601 timestamps and ``expiresIn`` durations."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# Matched against the whole text with ASCII digits: Python's \d also accepts other Unicode
# digits and $ also accepts a trailing newline, and neither is a duration.
_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# The longest lifetime any expiresIn may ask for: ten years. Longer values would overflow
# timestamps or outlive every key, so they are rejected as invalid, not silently capped.
MAX_DURATION_SECONDS = 10 * 366 * 86400


def to_iso(moment: datetime) -> str:
    """Format as JavaScript's toISOString: UTC, exactly three fractional digits and ``Z``."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def to_iso_from_epoch(seconds: int) -> str:
    return to_iso(datetime.fromtimestamp(seconds, timezone.utc))


def parse_duration(text: object) -> timedelta | None:
    """Parse ``<positive integer><s|m|h|d>``; return None when the text is not one."""
    if not isinstance(text, str):
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    digits = match.group(1).lstrip("0")
    # int() rejects texts of more than 4300 digits, and anything past 12 digits is over the maximum.
    if len(digits) > 12:
        return None
    seconds = int(digits or "0") * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0 or seconds > MAX_DURATION_SECONDS:
        return None
    return timedelta(seconds=seconds)


def truncate_to_milliseconds(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
