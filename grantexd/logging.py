"""JSON log lines on stdout, one object per line, through structlog.

Every line has ``level`` (debug, info, warn, error, fatal), ``time`` (epoch milliseconds) and
``msg`` (a stable dotted event name such as ``token.issued``); variable data goes in fields.
Request context (``reqId``, ``developerId``) is bound through contextvars once per request.
"""

from __future__ import annotations

import json
import logging as stdlib_logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVEL_NUMBERS = {"debug": 10, "info": 20, "warn": 30, "error": 40, "fatal": 50}
_LEVEL_NAMES = {"warning": "warn", "critical": "fatal", "exception": "error"}

# Field names whose values are bearer secrets or key material; their values are replaced
# before rendering, so a careless ``log.info(..., api_key=key)`` still cannot leak one.
_SECRET_FIELDS = frozenset(
    {
        "api_key",
        "apiKey",
        "authorization",
        "password",
        "secret",
        "token",
        "grantToken",
        "refreshToken",
        "refresh_token",
        "authorization_code",
        "codeVerifier",
        "private_key",
        "database_url",
        "redis_url",
    }
)


def _add_level(_logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
    return event_dict


def _add_time(_logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict["time"] = int(time.time() * 1000)
    return event_dict


def _put_standard_fields_first(
    _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
) -> Any:
    """Rename structlog's ``event`` to ``msg`` and lead each line with level, time and msg."""
    message = event_dict.pop("event", "")
    line = {"level": event_dict.pop("level"), "time": event_dict.pop("time"), "msg": message}
    line.update(event_dict)
    return line


def _redact_secrets(_logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    for name in _SECRET_FIELDS.intersection(event_dict):
        event_dict[name] = "[redacted]"
    return event_dict


class _JSONLineLogger:
    """Write each rendered line to stdout and flush, so journald sees it at once."""

    def msg(self, message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    log = debug = info = warning = warn = error = critical = fatal = exception = msg


def configure_logging(level: str = "info") -> None:
    """Configure structlog for JSON lines at ``level`` and above; safe to call more than once."""
    minimum = _LEVEL_NUMBERS.get(level, 20)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_level,
            _add_time,
            _redact_secrets,
            structlog.processors.format_exc_info,
            _put_standard_fields_first,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(minimum),
        logger_factory=lambda *args: _JSONLineLogger(),
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module (hypercorn, asyncpg) are kept at warning
    # and above, rendered through the same JSON formatter.
    handler = stdlib_logging.StreamHandler(sys.stdout)
    handler.setFormatter(_StdlibJSONFormatter())
    root = stdlib_logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(minimum, stdlib_logging.WARNING))


class _StdlibJSONFormatter(stdlib_logging.Formatter):
    def format(self, record: stdlib_logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": _LEVEL_NAMES.get(record.levelname.lower(), record.levelname.lower()),
            "time": int(record.created * 1000),
            "msg": "library.log",
            "logger": record.name,
            "text": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def get_logger(**fields: Any) -> Any:
    """Return a lazy logger: it picks up the configuration in force when it first logs."""
    return structlog.get_logger(**fields)


def log_fatal(event: str, **fields: Any) -> None:
    """Write one ``fatal`` line; used for startup failures just before exit status 1."""
    structlog.get_logger().critical(event, **fields)
