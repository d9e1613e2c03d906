"""JSON text exactly as JavaScript's ``JSON.stringify`` writes it, and its canonical form.

The audit hash is defined over JSON text produced by a JavaScript server, so this module
reproduces ECMAScript's output. Numbers are IEEE doubles written by Number::toString. Strings
escape only ``"``, ``\\``, control characters and unpaired surrogates. There is no
whitespace. Canonical JSON also sorts object keys at every depth by UTF-16 code units, as
``Array.prototype.sort`` compares strings, and keeps arrays in order.

Only JSON values are accepted: dict with str keys, list, str, int, float, bool and None.
NaN, Infinity and integers too large for a double raise ``ValueError``, because JavaScript
would write them as ``null`` and the text would no longer describe the value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# JSON.stringify escapes these (ES2019 "well-formed JSON.stringify" adds the surrogates).
# json.dumps with ensure_ascii=False escapes the same control characters, quote and
# backslash with the same spelling, but writes unpaired surrogates raw.
_UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")


def js_string(text: str) -> str:
    """Return ``text`` as a JSON string literal, escaped as ``JSON.stringify`` escapes it."""
    quoted = json.dumps(text, ensure_ascii=False)
    return _UNPAIRED_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)


def js_number(value: int | float) -> str:
    """Format a number as ECMAScript Number::toString formats the double nearest to it.

    Integers are converted to a double first, as ``JSON.parse`` would read them, so
    ``2**53 + 1`` gives ``9007199254740992`` and ``10**21`` gives ``1e+21``. ``-0`` gives ``0``.
    """
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"number {value} is outside the range of a double") from None
    if not math.isfinite(number):
        raise ValueError(f"number {number} is not finite; JSON has no NaN or Infinity")
    if number == 0:
        return "0"
    if number < 0:
        return "-" + js_number(-number)

    # repr gives the shortest digit string that reads back as the same double, which is
    # also the digit string ECMAScript chooses. Split it into digits and a decimal exponent.
    mantissa, _, exponent_text = repr(number).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent_text) if exponent_text else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")

    # In ECMAScript's terms the value is digits × 10^(n - k), with k digits and n = point.
    k = len(digits)
    n = point
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    exponent = n - 1
    sign = "+" if exponent >= 0 else "-"
    if k == 1:
        return f"{digits}e{sign}{abs(exponent)}"
    return f"{digits[0]}.{digits[1:]}e{sign}{abs(exponent)}"


def _utf16_sort_key(key: str) -> bytes:
    # Big-endian UTF-16 bytes compare in the same order as the code units they encode.
    return key.encode("utf-16-be", errors="surrogatepass")


_MAX_ARRAY_INDEX = 2**32 - 2


def _array_index(key: str) -> int | None:
    """Return the key as an array index (a canonical decimal below 2^32 - 1), or None."""
    if not key.isascii() or not key.isdigit() or (len(key) > 1 and key[0] == "0"):
        return None
    number = int(key)
    return number if number <= _MAX_ARRAY_INDEX else None


def _js_property_order(keys: list[str]) -> list[str]:
    """Order keys as a JavaScript object enumerates them: array indices ascending, then the rest."""
    indexed = [(index, key) for key in keys if (index := _array_index(key)) is not None]
    indexed.sort()
    return [key for _, key in indexed] + [key for key in keys if _array_index(key) is None]


def _write(value: Any, sort_keys: bool, parts: list[str]) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(js_string(value))
    elif isinstance(value, (int, float)):
        parts.append(js_number(value))
    elif isinstance(value, list):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, sort_keys, parts)
        parts.append("]")
    elif isinstance(value, dict):
        keys = list(value)
        for key in keys:
            if not isinstance(key, str):
                raise ValueError(f"object key {key!r} is not a string")
        if sort_keys:
            keys.sort(key=_utf16_sort_key)
        else:
            keys = _js_property_order(keys)
        parts.append("{")
        for index, key in enumerate(keys):
            if index:
                parts.append(",")
            parts.append(js_string(key))
            parts.append(":")
            _write(value[key], sort_keys, parts)
        parts.append("}")
    else:
        raise ValueError(f"{type(value).__name__} is not a JSON value")


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of ``value``: keys sorted by UTF-16 code units, JS scalars.

    NOTE: keys are written in pure sort order, so ``"10"`` precedes ``"9"``. A JavaScript
    implementation that rebuilt a sorted object before ``JSON.stringify`` would write
    array-index keys first, in numeric order. The protocol's test vectors contain no such
    keys, so which of the two the reference server does is unconfirmed.
    """
    parts: list[str] = []
    _write(value, True, parts)
    return "".join(parts)


def js_json(value: Any) -> str:
    """Return ``JSON.stringify(JSON.parse(text))`` for a value parsed from ``text`` in order.

    Object keys keep their order except that array-index keys (``"0"``, ``"7"``) come first in
    ascending numeric order, as JavaScript objects enumerate them.
    """
    parts: list[str] = []
    _write(value, False, parts)
    return "".join(parts)
