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

from grantexd.errors import BadRequest, GrantexError
from grantexd.http import (
    accounts,
    agents,
    anomalies,
    audit,
    authorize,
    delegation,
    grants,
    health,
    metrics,
    openapi,
    pages,
    principal,
    tokens,
    webhooks,
    well_known,
)
from grantexd.http.limits import add_rate_limit_headers, enforce_ip_limit
from grantexd.http.metrics import record_request
from grantexd.http.requests import MAX_BODY_BYTES, read_json_body, text_problem
from grantexd.http.responses import error_response
from grantexd.http.state import RuntimeState
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.tracing import end_request_span, start_request_span, trace_id_of

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

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Probes arrive every few seconds from load balancers; their access lines go to debug.
_QUIET_PATHS = ("/health", "/health/live", "/health/ready", "/metrics")


def _status_code_name(status: int) -> str:
    return {
        401: "UNAUTHORIZED",
        403: "FORBIDDEN",
        404: "NOT_FOUND",
        422: "VALIDATION_ERROR",
    }.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")


def create_app(services: Services, state: RuntimeState) -> QuartTrio:
    # No default static route: the pages blueprint serves its own files.
    app = QuartTrio("grantexd", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    app.url_map.strict_slashes = False
    allowed_origins = frozenset(services.config.cors_allowed_origins)
    outage_log = RepeatLimiter(interval_seconds=5.0)

    @app.before_request
    async def start_request() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _INCOMING_REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        g.started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(reqId=g.request_id)
        rule = request.url_rule.rule if request.url_rule is not None else None
        g.request_span, g.trace_token = start_request_span(request.method, rule, request.headers)
        trace_id = trace_id_of(g.request_span)
        if trace_id is not None:
            structlog.contextvars.bind_contextvars(traceId=trace_id)
        await enforce_ip_limit(services)
        _check_url_text()
        # The body is parsed before any handler authenticates, as the protocol orders it:
        # malformed JSON without credentials is a 400, not a 401. Unknown routes keep their 404.
        # Only the JSON API is under /v1/; the consent page posts an HTML form to /consent.
        is_api_request = request.path.startswith("/v1/")
        if request.method in _BODY_METHODS and request.routing_exception is None and is_api_request:
            await read_json_body()

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
            response.set_data(b"")
        if response.status_code == 204:
            # A 204 has no body, so it has no media type either.
            response.headers.pop("Content-Type", None)
        add_rate_limit_headers(response)
        _log_completion(services, response)
        if g.get("request_span") is not None:
            end_request_span(g.request_span, g.trace_token, response.status_code)
            g.request_span = None
        return response

    @app.errorhandler(GrantexError)
    async def render_domain_error(error: GrantexError) -> Response:
        if error.status >= 500 and outage_log.should_log(type(error).__name__):
            log.error(
                "request.failed",
                status=error.status,
                code=error.code,
                error=error.message,
                suppressedSinceLast=outage_log.take_suppressed(type(error).__name__),
            )
        return error_response(error.status, error.code, error.message, error.include_request_id)

    @app.errorhandler(HTTPException)
    async def render_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 405:
            # A known path with another method is a missing route, as on the reference
            # server: clients probing optional routes (POST /v1/audit/checkpoints) expect 404.
            status = 404
        if status == 404:
            message = f"Route {request.method}:{request.path} not found"
        elif status == 413:
            message = f"Request body is larger than the limit of {MAX_BODY_BYTES} bytes"
        elif status >= 500:
            log.error("request.failed.http", status=status, error=repr(error))
            message = "An unexpected error occurred"
        else:
            message = error.description or error.name
        return error_response(status, _status_code_name(status), message)

    @app.errorhandler(Exception)
    async def render_unexpected_error(error: Exception) -> Response:
        log.error("request.failed.unexpected", error=repr(error), exc_info=error)
        return error_response(500, "INTERNAL_ERROR", "An unexpected error occurred")

    blueprints = (
        health,
        well_known,
        metrics,
        openapi,
        accounts,
        agents,
        authorize,
        tokens,
        grants,
        delegation,
        principal,
        audit,
        webhooks,
        anomalies,
        pages,
    )
    for module in blueprints:
        app.register_blueprint(module.create_blueprint(services, state))
    return app


def _check_url_text() -> None:
    """Reject a path or query parameter with a NUL character, which PostgreSQL text cannot hold."""
    texts = [request.path]
    for name, value in request.args.items(multi=True):
        texts.extend((name, value))
    for text in texts:
        problem = text_problem(text)
        if problem is not None:
            raise BadRequest(f"Request URL {problem}")


class RepeatLimiter:
    """Let one log line per kind through every ``interval_seconds`` and count the rest.

    During a database outage every request fails the same way; one line per interval, with the
    number of lines suppressed since the last one, says as much as thousands would.
    """

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def should_log(self, kind: str) -> bool:
        now = time.monotonic()
        last = self._last_logged.get(kind)
        if last is not None and now - last < self.interval_seconds:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last_logged[kind] = now
        return True

    def take_suppressed(self, kind: str) -> int:
        return self._suppressed.pop(kind, 0)


def _log_completion(services: Services, response: Response) -> None:
    started = g.get("started")
    elapsed_seconds = time.perf_counter() - started if started is not None else 0.0
    elapsed_ms = round(elapsed_seconds * 1000, 2)
    rule = request.url_rule.rule if request.url_rule is not None else None
    record_request(services, request.method, rule, response.status_code, elapsed_seconds)
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
