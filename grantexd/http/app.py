"""The Quart-Trio application: request ids, headers, access logs and the error envelope.

This module is the one place that turns exceptions into responses: domain errors become
``{"message", "code", "requestId"}`` with their own status, routing errors get the same
envelope, and anything unexpected is logged with the request id and answered with a 500 that
carries no detail.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from grantexd.errors import GrantexError
from grantexd.http import accounts, agents, authorize, delegation, grants, health, principal, tokens, well_known
from grantexd.http.requests import MAX_BODY_BYTES
from grantexd.http.responses import error_response
from grantexd.http.state import RuntimeState
from grantexd.logging import get_logger
from grantexd.services.context import Services

log = get_logger()

_INCOMING_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-XSS-Protection": "0",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-store",
}
_DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
_CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_CORS_HEADERS = "Content-Type, Authorization, Idempotency-Key, X-Request-Id"
_CORS_EXPOSED = "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, X-Request-Id"

# Probes arrive every few seconds from load balancers; their access lines go to debug.
_QUIET_PATHS = ("/health", "/health/live", "/health/ready")


def _status_code_name(status: int) -> str:
    return {
        401: "UNAUTHORIZED",
        403: "FORBIDDEN",
        404: "NOT_FOUND",
        405: "METHOD_NOT_ALLOWED",
        413: "PAYLOAD_TOO_LARGE",
        422: "VALIDATION_ERROR",
    }.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")


def create_app(services: Services, state: RuntimeState) -> QuartTrio:
    app = QuartTrio("grantexd")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    app.url_map.strict_slashes = False
    allowed_origins = frozenset(services.config.cors_allowed_origins)

    @app.before_request
    async def start_request() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _INCOMING_REQUEST_ID.match(incoming) else str(uuid.uuid4())
        g.started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(reqId=g.request_id)

    @app.after_request
    async def finish_request(response: Response) -> Response:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        response.headers.setdefault("Content-Security-Policy", _DEFAULT_CSP)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        origin = request.headers.get("Origin")
        if origin is not None and origin in allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSED
            response.headers["Vary"] = "Origin"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
                response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        if request.method == "OPTIONS" and response.status_code == 200:
            response.status_code = 204
            await response.set_data(b"")
        _log_completion(response)
        return response

    @app.errorhandler(GrantexError)
    async def render_domain_error(error: GrantexError) -> Response:
        if error.status >= 500:
            log.error("request.failed", status=error.status, code=error.code, error=error.message)
        return error_response(error.status, error.code, error.message, error.include_request_id)

    @app.errorhandler(HTTPException)
    async def render_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 404:
            message = f"Route {request.method}:{request.path} not found"
        elif status == 405:
            message = f"Method {request.method} is not allowed on {request.path}"
        elif status == 413:
            message = f"Request body is larger than the limit of {MAX_BODY_BYTES} bytes"
        else:
            message = error.description or error.name
        return error_response(status, _status_code_name(status), message)

    @app.errorhandler(Exception)
    async def render_unexpected_error(error: Exception) -> Response:
        log.error("request.failed.unexpected", error=repr(error), exc_info=error)
        return error_response(500, "INTERNAL_ERROR", "An unexpected error occurred")

    for module in (health, well_known, accounts, agents, authorize, tokens, grants, delegation, principal):
        app.register_blueprint(module.create_blueprint(services, state))
    return app


def _log_completion(response: Response) -> None:
    started = g.get("started")
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
    rule = request.url_rule.rule if request.url_rule is not None else None
    fields = {
        "method": request.method,
        "route": rule,
        "status": response.status_code,
        "responseTime": elapsed_ms,
    }
    if request.path in _QUIET_PATHS:
        log.debug("request.completed", **fields)
    elif response.status_code >= 500:
        log.error("request.completed", **fields)
    else:
        log.info("request.completed", **fields)
