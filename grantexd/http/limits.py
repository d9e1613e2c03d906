"""Rate limits at the HTTP edge: which limit a request counts against, and the headers it gets."""

from __future__ import annotations

from quart import Response, g, request

from grantexd.services.context import Services
from grantexd.services.ratelimit import EXEMPT_PATHS, ROUTE_IP_LIMITS, client_ip, raise_if_exceeded


async def enforce_limit(services: Services, scope: str, subject: str, limit: int) -> None:
    """Count the request against one limit; the last limit checked sets the response headers."""
    decision = await services.rate_limiter.check(scope, subject, limit)
    if decision is None:
        return
    g.rate_limit = decision
    if not decision.allowed:
        services.metrics.rate_limited.labels(scope).inc()
    raise_if_exceeded(decision, scope)


async def enforce_ip_limit(services: Services) -> None:
    if request.path in EXEMPT_PATHS or request.method == "OPTIONS":
        return
    default = services.config.rate_limit_ip_per_minute
    if default <= 0:
        return
    rule = request.url_rule.rule if request.url_rule is not None else None
    limit = ROUTE_IP_LIMITS.get((request.method, rule or ""), default)
    address = client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"), services.config.trust_proxy)
    scope = "ip" if limit == default else f"ip:{rule}"
    await enforce_limit(services, scope, address, limit)


async def enforce_developer_limit(services: Services, developer_id: str) -> None:
    await enforce_limit(services, "developer", developer_id, services.config.rate_limit_developer_per_minute)


async def enforce_authorize_limit(services: Services, developer_id: str) -> None:
    await enforce_limit(services, "authorize", developer_id, services.config.rate_limit_authorize_per_minute)


def add_rate_limit_headers(response: Response) -> None:
    decision = g.get("rate_limit")
    if decision is None or request.path in EXEMPT_PATHS:
        return
    response.headers["X-RateLimit-Limit"] = str(decision.limit)
    response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
    response.headers["X-RateLimit-Reset"] = str(decision.reset_seconds)
    if not decision.allowed:
        response.headers["Retry-After"] = str(decision.reset_seconds)
