"""Reading requests: the JSON body, the developer behind the API key, and list pagination."""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlsplit
import math
import re
from dataclasses import dataclass
from typing import Any

import structlog
from werkzeug.datastructures import Headers
from quart import g, request

from grantexd.http.limits import enforce_developer_limit
from grantexd.config import Config
from grantexd.errors import BadRequest, UnsupportedMediaType
from grantexd.services import accounts
from grantexd.services.context import Services
from grantexd.store.developers import Developer

MAX_BODY_BYTES = 1024 * 1024
_MAX_JSON_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, limit: int) -> int:
    """Return the nesting depth of a parsed JSON value, stopping once it passes ``limit``."""
    depth = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, level)
            if depth > limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return depth


def text_problem(text: str) -> str | None:
    """Return why PostgreSQL cannot store ``text``, or None when it can.

    PostgreSQL text and jsonb reject NUL, and UTF-8 has no encoding for an unpaired
    surrogate (JSON allows both as ``\\u`` escapes), so such input is a 400 here rather
    than a driver error later.
    """
    if "\x00" in text:
        return "must not contain NUL characters (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain unpaired UTF-16 surrogates"
    return None


def _value_problem(value: Any) -> str | None:
    """Return what is wrong with the first unstorable key, string or number in a parsed body.

    A number such as ``1e400`` parses as an infinite float, which has no JSON form to store
    or send back, so it is rejected with the strings PostgreSQL cannot hold.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return f"strings {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            return "numbers must be finite double-precision values"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


_NOT_READ = object()


async def read_json_body() -> Any:
    """Return the parsed JSON body, or None when there is none.

    The body is parsed once per request and the result cached, so the ``before_request``
    hook can reject a bad body before authentication and handlers reuse the value.
    A body sent as text/plain is returned as a string, so the route's own checks reject it
    with their usual message. Any other media type is 415; unparseable JSON is 400.
    """
    cached = g.get("json_body", _NOT_READ)
    if cached is not _NOT_READ:
        return cached
    value = await _parse_body()
    g.json_body = value
    return value


async def _parse_body() -> Any:
    raw = await request.get_data(cache=True, as_text=False)
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    media_type = (request.mimetype or "").lower()
    if not data:
        if media_type == "application/json" or media_type.endswith("+json"):
            raise BadRequest("Body cannot be empty when Content-Type is application/json")
        return None
    if media_type == "text/plain":
        text = data.decode("utf-8", errors="replace")
        problem = text_problem(text)
        if problem is not None:
            raise BadRequest(f"Request body {problem}")
        return text
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Unsupported Content-Type {media_type!r}; send application/json")
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("Request body is not valid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BadRequest("Request body is not valid JSON: it is not UTF-8 text") from None
    except ValueError as exc:
        # int() refuses numbers of more than 4300 digits (Python 3.11); its message names a
        # Python setting, which means nothing to an API client.
        if "digits" in str(exc):
            raise BadRequest("Request body is not valid JSON: a number has too many digits") from None
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if _depth(value, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise BadRequest(f"Request body is not valid JSON: nested deeper than {_MAX_JSON_DEPTH} levels")
    problem = _value_problem(value)
    if problem is not None:
        raise BadRequest(f"Request body {problem}")
    return value


async def current_developer(services: Services) -> Developer:
    """Authenticate the API key once per request and bind the developer to the log context."""
    developer: Developer | None = g.get("developer")
    if developer is None:
        developer = await accounts.authenticate(services, request.headers.get("Authorization"))
        g.developer = developer
        structlog.contextvars.bind_contextvars(developerId=developer.id)
        await enforce_developer_limit(services, developer.id)
    return developer


@dataclass(frozen=True)
class Page:
    """``page``/``pageSize`` from the query; without them a list is returned whole."""

    limit: int | None
    offset: int


MAX_PAGE_SIZE = 1000
# Keeps the row offset, (page - 1) * pageSize, far below PostgreSQL's bigint limit.
MAX_PAGE = 1_000_000
_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


def _whole_number(text: str | None, default: int) -> int | None:
    """Return the ASCII decimal ``text`` as an int, ``default`` when absent, None when malformed."""
    if text is None:
        return default
    if _WHOLE_NUMBER.fullmatch(text) is None:
        return None
    return int(text)


def read_page() -> Page:
    page_text = request.args.get("page")
    size_text = request.args.get("pageSize")
    if page_text is None and size_text is None:
        return Page(limit=None, offset=0)
    page = _whole_number(page_text, 1)
    if page is None or not 1 <= page <= MAX_PAGE:
        raise BadRequest(f"page must be a whole number from 1 to {MAX_PAGE}, got {page_text!r}")
    size = _whole_number(size_text, 50)
    if size is None or not 1 <= size <= MAX_PAGE_SIZE:
        raise BadRequest(f"pageSize must be a whole number from 1 to {MAX_PAGE_SIZE}, got {size_text!r}")
    return Page(limit=size, offset=(page - 1) * size)


def query_text(name: str) -> str | None:
    value = request.args.get(name)
    return value if value else None


def trusted_origins(config: Config) -> frozenset[str]:
    """Return the origins whose pages may post consent decisions: this server's own public
    origin and the configured CORS origins."""
    parts = urlsplit(config.public_base_url)
    return frozenset({f"{parts.scheme}://{parts.netloc}", *config.cors_allowed_origins})


def is_cross_site_post(headers: Headers | Mapping[str, str], allowed_origins: frozenset[str]) -> bool:
    """Tell whether a browser sent this POST from a page of another site.

    Browsers mark every request with ``Sec-Fetch-Site``; where it is present, only
    ``same-origin`` (our own page) and ``none`` (typed by the user) pass. Older browsers send
    only ``Origin``, which must then be a trusted origin. ``Origin: null`` alone proves nothing:
    Chromium sends it for our own form, because the pages use ``Referrer-Policy: no-referrer``.
    API clients send neither header and are not browsers, so they pass.
    """
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("Origin")
    return origin is not None and origin != "null" and origin not in allowed_origins
