"""Reading requests: the JSON body, the developer behind the API key, and list pagination."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from quart import g, request

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


async def read_json_body() -> Any:
    """Return the parsed JSON body, or None when there is none.

    A body sent as text/plain is returned as a string, so the route's own checks reject it
    with their usual message. Any other media type is 415; unparseable JSON is 400.
    """
    data = await request.get_data(cache=True)
    media_type = (request.mimetype or "").lower()
    if not data:
        if media_type == "application/json" or media_type.endswith("+json"):
            raise BadRequest("Body cannot be empty when Content-Type is application/json")
        return None
    if media_type == "text/plain":
        return data.decode("utf-8", errors="replace")
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Unsupported Content-Type {media_type!r}; send application/json")
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("Request body is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if _depth(value, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise BadRequest(f"Request body is not valid JSON: nested deeper than {_MAX_JSON_DEPTH} levels")
    return value


async def current_developer(services: Services) -> Developer:
    """Authenticate the API key once per request and bind the developer to the log context."""
    developer: Developer | None = g.get("developer")
    if developer is None:
        developer = await accounts.authenticate(services, request.headers.get("Authorization"))
        g.developer = developer
        structlog.contextvars.bind_contextvars(developerId=developer.id)
    return developer


@dataclass(frozen=True)
class Page:
    """``page``/``pageSize`` from the query; without them a list is returned whole."""

    limit: int | None
    offset: int


MAX_PAGE_SIZE = 1000


def read_page() -> Page:
    page_text = request.args.get("page")
    size_text = request.args.get("pageSize")
    if page_text is None and size_text is None:
        return Page(limit=None, offset=0)
    try:
        page = int(page_text) if page_text is not None else 1
    except ValueError:
        raise BadRequest(f"page must be a whole number of at least 1, got {page_text!r}") from None
    try:
        size = int(size_text) if size_text is not None else 50
    except ValueError:
        raise BadRequest(f"pageSize must be a whole number from 1 to {MAX_PAGE_SIZE}, got {size_text!r}") from None
    if page < 1:
        raise BadRequest(f"page must be a whole number of at least 1, got {page_text!r}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise BadRequest(f"pageSize must be a whole number from 1 to {MAX_PAGE_SIZE}, got {size_text!r}")
    return Page(limit=size, offset=(page - 1) * size)


def query_text(name: str) -> str | None:
    value = request.args.get(name)
    return value if value else None
