"""JSON responses with the protocol's media type, and the error envelope."""

from __future__ import annotations

import json
from typing import Any

from quart import Response, g


def json_response(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json; charset=utf-8",
    )


def no_content() -> Response:
    return Response("", status=204)


def error_response(status: int, code: str, message: str, include_request_id: bool = True) -> Response:
    body: dict[str, str] = {"message": message, "code": code}
    if include_request_id:
        body["requestId"] = g.get("request_id", "")
    return json_response(body, status)
