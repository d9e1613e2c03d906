"""Summarize a py-spy profile of grantexd: the share of samples in each part of the stack.

py-spy's raw format has one line per distinct stack, ``frame;frame;...;frame COUNT``, root
first, where a frame reads ``function (path/to/file.py:line)``. Each sample goes to exactly one
category, found in two steps:

1. The first of ``LIBRARIES`` that has a frame anywhere in the stack. These libraries do one
   kind of work for their caller, so ``json.dumps`` called by structlog counts as logging, and
   asyncpg parsing a reply inside an asyncio callback counts as asyncpg.
2. Otherwise the layer of the frame nearest the leaf that belongs to one of ``LAYERS``. Every
   request runs inside Trio, Hypercorn, Quart and grantexd frames at once, so the innermost
   one is where the time went.

Usage: ``python -m bench.profile_summary PROFILE.txt``
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path


def _packages(*names: str) -> re.Pattern[str]:
    """Match a frame in a file of one of the packages. py-spy prints paths relative to sys.path."""
    return re.compile(r"\((?:[^()]*/)?(?:" + "|".join(names) + r")/")


LIBRARIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("JWT sign/verify (PyJWT, cryptography)", _packages("jwt", "cryptography")),
    ("asyncpg (PostgreSQL protocol, pool)", _packages("asyncpg")),
    ("redis-py", _packages("redis")),
    ("logging (structlog, its JSON rendering)", re.compile(r"\((?:[^()]*/)?(?:structlog|logging)/|grantexd/logging\.py")),
    ("metrics and tracing (prometheus_client, OpenTelemetry)", _packages("prometheus_client", "opentelemetry")),
    ("JSON outside logging", _packages("json")),
)
LAYERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("asyncio bridge (trio-asyncio, asyncio)", _packages("trio_asyncio", "asyncio")),
    ("HTTP server (Hypercorn, h11)", _packages("hypercorn", "h11", "h2", "wsproto")),
    ("Quart and Werkzeug (routing, request and response objects)", _packages("quart", "quart_trio", "werkzeug")),
    ("grantexd code", _packages("grantexd")),
    ("Trio (scheduler, cancel scopes, sockets)", _packages("trio")),
)
OTHER = "other"
_RAW_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def categorize(stack: str) -> str:
    for name, pattern in LIBRARIES:
        if pattern.search(stack):
            return name
    for frame in reversed(stack.split(";")):
        for name, pattern in LAYERS:
            if pattern.search(frame):
                return name
    return OTHER


def count_samples(raw_profile: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in raw_profile.splitlines():
        match = _RAW_LINE.match(line.strip())
        if match is None:
            continue
        counts[categorize(match.group("stack"))] += int(match.group("count"))
    return counts


def count_functions(raw_profile: str, pattern: re.Pattern[str]) -> int:
    """Count the samples whose stack has a frame matching ``pattern`` anywhere (inclusive count)."""
    total = 0
    for line in raw_profile.splitlines():
        match = _RAW_LINE.match(line.strip())
        if match is not None and pattern.search(match.group("stack")):
            total += int(match.group("count"))
    return total


# Inclusive counts of single functions, printed under the categories because they overlap them.
FUNCTIONS = (
    ("jwt.encode (RS256 signing)", re.compile(r"\bencode \((?:[^()]*/)?jwt/api_jwt\.py")),
    ("jwt.decode (RS256 verification)", re.compile(r"\bdecode \((?:[^()]*/)?jwt/api_jwt\.py")),
    ("structlog processors and rendering", _packages("structlog")),
    ("request.completed access log line", re.compile(r"_log_completion \(")),
)


def summarize_profile(raw_profile: str) -> str:
    counts = count_samples(raw_profile)
    total = sum(counts.values())
    if total == 0:
        return "py-spy recorded no samples"
    lines = [f"py-spy: {total} samples of busy threads (py-spy skips idle ones without --idle)", ""]
    width = max(len(name) for name in counts)
    for name, count in counts.most_common():
        lines.append(f"  {name.ljust(width)}  {count / total:6.1%}  ({count})")
    lines.append("")
    lines.append("Inclusive (a sample may be counted in several of these):")
    for name, pattern in FUNCTIONS:
        count = count_functions(raw_profile, pattern)
        lines.append(f"  {name.ljust(width)}  {count / total:6.1%}  ({count})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.profile_summary PROFILE.txt (a py-spy record --format raw output)", file=sys.stderr)
        return 2
    print(summarize_profile(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
