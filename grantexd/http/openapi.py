"""``GET /openapi.json``: an OpenAPI 3.1 description of every route the daemon serves.

The operations are listed in one table; a test compares it with the application's URL map,
so a route added without a description fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quart import Blueprint, Response

from grantexd import __version__
from grantexd.http.responses import json_response
from grantexd.http.state import RuntimeState
from grantexd.services.context import Services


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_TIME = {"type": "string", "format": "date-time"}
_INTEGER = {"type": "integer"}
_BOOLEAN = {"type": "boolean"}
_ANY_OBJECT = {"type": "object"}

_SCHEMAS: dict[str, Any] = {
    "Error": _object(["message", "code"], message=_STRING, code=_STRING, requestId=_STRING),
    "Agent": _object(
        ["agentId", "did", "developerId", "name", "description", "scopes", "status", "createdAt", "updatedAt"],
        agentId=_STRING,
        did=_STRING,
        developerId=_STRING,
        name=_STRING,
        description=_STRING,
        scopes=_STRINGS,
        redirectUris=_STRINGS,
        status={"type": "string", "enum": ["active", "suspended"]},
        createdAt=_TIME,
        updatedAt=_TIME,
    ),
    "AgentInput": _object(
        [],
        name=_STRING,
        description=_STRING,
        scopes=_STRINGS,
        redirectUris=_STRINGS,
        status={"type": "string", "enum": ["active", "suspended"]},
    ),
    "Grant": _object(
        ["grantId", "agentId", "principalId", "developerId", "scopes", "status", "issuedAt", "expiresAt"],
        grantId=_STRING,
        agentId=_STRING,
        agentDid=_STRING,
        principalId=_STRING,
        developerId=_STRING,
        scopes=_STRINGS,
        status={"type": "string", "enum": ["active", "revoked"]},
        issuedAt=_TIME,
        expiresAt=_TIME,
        revokedAt=_TIME,
        delegationDepth=_INTEGER,
        parentGrantId=_STRING,
    ),
    "TokenResponse": _object(
        ["grantToken", "expiresAt", "scopes", "refreshToken", "grantId"],
        grantToken=_STRING,
        expiresAt=_TIME,
        scopes=_STRINGS,
        refreshToken=_STRING,
        grantId=_STRING,
        delegationDepth=_INTEGER,
    ),
    "AuthorizeRequest": _object(
        ["agentId", "principalId", "scopes"],
        agentId=_STRING,
        principalId=_STRING,
        scopes=_STRINGS,
        redirectUri=_STRING,
        state=_STRING,
        expiresIn={"type": "string", "pattern": "^[0-9]+[smhd]$"},
        audience=_STRING,
        codeChallenge=_STRING,
        codeChallengeMethod={"type": "string", "enum": ["S256"]},
        purpose=_STRING,
    ),
    "AuthorizeResponse": _object(
        ["authRequestId", "consentUrl", "expiresAt"],
        authRequestId=_STRING,
        consentUrl=_STRING,
        expiresAt=_TIME,
        sandbox=_BOOLEAN,
        code=_STRING,
    ),
    "AuditEntry": _object(
        ["entryId", "agentId", "agentDid", "grantId", "principalId", "action", "hash", "timestamp"],
        entryId=_STRING,
        agentId=_STRING,
        agentDid=_STRING,
        grantId=_STRING,
        principalId=_STRING,
        developerId=_STRING,
        action=_STRING,
        metadata=_ANY_OBJECT,
        hash=_STRING,
        prevHash={"type": ["string", "null"]},
        timestamp=_TIME,
        status={"type": "string", "enum": ["success", "failure", "blocked"]},
    ),
    "Webhook": _object(
        ["id", "url", "events", "createdAt"],
        id=_STRING,
        url=_STRING,
        events=_STRINGS,
        createdAt=_TIME,
        secret={"type": "string", "description": "Only in the create and rotate-secret responses"},
        previousSecretExpiresAt=_TIME,
    ),
    "WebhookDelivery": _object(
        ["id", "webhookId", "eventId", "eventType", "status", "attempts", "maxAttempts", "createdAt"],
        id=_STRING,
        webhookId=_STRING,
        eventId=_STRING,
        eventType=_STRING,
        status={"type": "string", "enum": ["pending", "delivered", "failed"]},
        attempts=_INTEGER,
        maxAttempts=_INTEGER,
        lastStatusCode={"type": ["integer", "null"]},
        lastError={"type": ["string", "null"]},
        lastAttemptAt={"type": ["string", "null"], "format": "date-time"},
        nextAttemptAt={"type": ["string", "null"], "format": "date-time"},
        deliveredAt={"type": ["string", "null"], "format": "date-time"},
        createdAt=_TIME,
    ),
    "Anomaly": _object(
        ["id", "type", "severity", "agentId", "description", "metadata", "detectedAt"],
        id=_STRING,
        type={"type": "string", "enum": ["rate_spike", "high_failure_rate", "new_principal", "off_hours_activity"]},
        severity={"type": "string", "enum": ["low", "medium", "high"]},
        agentId=_STRING,
        principalId={"type": ["string", "null"]},
        description=_STRING,
        metadata=_ANY_OBJECT,
        detectedAt=_TIME,
        acknowledgedAt={"type": ["string", "null"], "format": "date-time"},
    ),
    "Health": _object(
        ["status"],
        status={"type": "string", "enum": ["ok", "degraded", "draining"]},
        failing={"type": "array", "items": {"type": "string", "enum": ["db", "redis"]}},
    ),
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    auth: str = "apiKey"  # "apiKey", "session", "metrics" or "none"
    request: str | dict[str, Any] | None = None
    responses: dict[int, str | dict[str, Any] | None] = field(default_factory=dict)
    content_type: str = "application/json"


_TOKEN_BODY = _object(["token"], token=_STRING)

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/health", "Probe PostgreSQL and Redis", "health", "none", None, {200: "Health", 503: "Health"}),
    Operation("GET", "/health/live", "Answer while the process serves", "health", "none", None, {200: "Health"}),
    Operation("GET", "/health/ready", "Probe dependencies; 503 while draining", "health", "none", None,
              {200: "Health", 503: "Health"}),
    Operation("GET", "/metrics", "Prometheus metrics", "operations", "metrics", None, {200: None}, "text/plain"),
    Operation("GET", "/openapi.json", "This document", "operations", "none", None, {200: _ANY_OBJECT}),
    Operation("GET", "/.well-known/jwks.json", "Public keys that verify grant tokens", "keys", "none", None,
              {200: _object(["keys"], keys={"type": "array", "items": _ANY_OBJECT})}),
    Operation("POST", "/v1/signup", "Create a developer account and its API key", "developers", "none",
              _object(["name"], name=_STRING, email=_STRING, mode={"type": "string", "enum": ["live", "sandbox"]}),
              {201: _ANY_OBJECT, 409: "Error"}),
    Operation("GET", "/v1/me", "The calling developer", "developers", responses={200: _ANY_OBJECT}),
    Operation("PATCH", "/v1/me", "Update developer settings", "developers",
              request=_object([], fidoRequired=_BOOLEAN, fidoRpName=_STRING), responses={200: _ANY_OBJECT}),
    Operation("POST", "/v1/keys/rotate", "Replace the API key", "developers", responses={200: _ANY_OBJECT}),
    Operation("POST", "/v1/agents", "Register an agent", "agents", request="AgentInput", responses={201: "Agent"}),
    Operation("GET", "/v1/agents", "List agents, newest first", "agents",
              responses={200: _object(["agents"], agents={"type": "array", "items": _ref("Agent")})}),
    Operation("GET", "/v1/agents/{agent_id}", "Get an agent", "agents", responses={200: "Agent", 404: "Error"}),
    Operation("PATCH", "/v1/agents/{agent_id}", "Update an agent", "agents", request="AgentInput",
              responses={200: "Agent", 404: "Error"}),
    Operation("POST", "/v1/agents/{agent_id}", "Update an agent (the Python SDK's method)", "agents",
              request="AgentInput", responses={200: "Agent", 404: "Error"}),
    Operation("DELETE", "/v1/agents/{agent_id}", "Delete an agent with its grants", "agents",
              responses={204: None, 404: "Error"}),
    Operation("POST", "/v1/authorize", "Start an authorization request", "authorization",
              request="AuthorizeRequest", responses={201: "AuthorizeResponse", 404: "Error", 429: "Error"}),
    Operation("POST", "/v1/authorize/{request_id}/approve", "Approve a sandbox request", "authorization",
              responses={200: _ANY_OBJECT, 403: "Error", 404: "Error"}),
    Operation("POST", "/v1/authorize/{request_id}/deny", "Deny a sandbox request", "authorization",
              responses={200: _ANY_OBJECT, 403: "Error", 404: "Error"}),
    Operation("GET", "/v1/consent/{request_id}", "What the consent page shows", "consent", "none",
              responses={200: _ANY_OBJECT, 404: "Error", 410: "Error"}),
    Operation("POST", "/v1/consent/{request_id}/approve", "Approve a request as the principal", "consent", "none",
              responses={200: _ANY_OBJECT, 410: "Error"}),
    Operation("POST", "/v1/consent/{request_id}/deny", "Deny a request as the principal", "consent", "none",
              responses={200: _ANY_OBJECT, 404: "Error"}),
    Operation("GET", "/consent", "The consent page", "pages", "none", None, {200: None}, "text/html"),
    Operation("POST", "/consent", "The consent page's form decision", "pages", "none", None, {303: None},
              "text/html"),
    Operation("GET", "/permissions", "The principal's permissions page", "pages", "none", None, {200: None},
              "text/html"),
    Operation("GET", "/static/{name}", "A file of the pages (script or style sheet)", "pages", "none", None,
              {200: None}, "text/plain"),
    Operation("POST", "/v1/token", "Exchange an authorization code for a grant token", "tokens",
              request=_object(["code", "agentId"], code=_STRING, agentId=_STRING, codeVerifier=_STRING),
              responses={201: "TokenResponse", 400: "Error"}),
    Operation("POST", "/v1/token/refresh", "Rotate a refresh token for a new grant token", "tokens",
              request=_object(["refreshToken", "agentId"], refreshToken=_STRING, agentId=_STRING),
              responses={201: "TokenResponse", 400: "Error"}),
    Operation("POST", "/v1/tokens/verify", "Verify a grant token online", "tokens", request=_TOKEN_BODY,
              responses={200: _ANY_OBJECT}),
    Operation("POST", "/v1/tokens/revoke", "Revoke one grant token", "tokens",
              request=_object(["jti"], jti=_STRING), responses={204: None, 404: "Error"}),
    Operation("GET", "/v1/grants", "List grants, newest first", "grants",
              responses={200: _object(["grants"], grants={"type": "array", "items": _ref("Grant")})}),
    Operation("GET", "/v1/grants/{grant_id}", "Get a grant", "grants", responses={200: "Grant", 404: "Error"}),
    Operation("DELETE", "/v1/grants/{grant_id}", "Revoke a grant and all its descendants", "grants",
              responses={204: None, 404: "Error"}),
    Operation("POST", "/v1/grants/delegate", "Delegate part of a grant to a sub-agent", "grants",
              request=_object(["parentGrantToken", "subAgentId", "scopes"], parentGrantToken=_STRING,
                              subAgentId=_STRING, scopes=_STRINGS, expiresIn=_STRING),
              responses={201: "TokenResponse", 400: "Error", 403: "Error", 404: "Error"}),
    Operation("POST", "/v1/grants/verify", "Introspect a grant token", "grants", request=_TOKEN_BODY,
              responses={200: _ANY_OBJECT, 400: "Error"}),
    Operation("POST", "/v1/audit/log", "Append an audit entry to the hash chain", "audit",
              request=_object(["agentId", "agentDid", "grantId", "principalId", "action"], agentId=_STRING,
                              agentDid=_STRING, grantId=_STRING, principalId=_STRING, action=_STRING,
                              metadata=_ANY_OBJECT, status=_STRING),
              responses={201: "AuditEntry", 402: "Error"}),
    Operation("GET", "/v1/audit/entries", "List audit entries in chain order", "audit",
              responses={200: _object(["entries"], entries={"type": "array", "items": _ref("AuditEntry")})}),
    Operation("GET", "/v1/audit/{entry_id}", "Get an audit entry", "audit",
              responses={200: "AuditEntry", 404: "Error"}),
    Operation("POST", "/v1/anomalies/detect", "Scan this developer's agents for anomalies now", "anomalies",
              responses={200: _object(["detectedAt", "total", "anomalies"], detectedAt=_TIME, total=_INTEGER,
                                      anomalies={"type": "array", "items": _ref("Anomaly")})}),
    Operation("GET", "/v1/anomalies", "List recorded anomalies, newest first", "anomalies",
              responses={200: _object(["anomalies", "total"], total=_INTEGER,
                                      anomalies={"type": "array", "items": _ref("Anomaly")})}),
    Operation("PATCH", "/v1/anomalies/{anomaly_id}/acknowledge", "Acknowledge an anomaly", "anomalies",
              responses={200: "Anomaly", 404: "Error"}),
    Operation("POST", "/v1/webhooks", "Register a webhook endpoint; the response shows its secret once", "webhooks",
              request=_object(["url", "events"], url=_STRING, events=_STRINGS),
              responses={201: "Webhook", 400: "Error", 409: "Error"}),
    Operation("GET", "/v1/webhooks", "List webhook endpoints, newest first", "webhooks",
              responses={200: _object(["webhooks"], webhooks={"type": "array", "items": _ref("Webhook")})}),
    Operation("DELETE", "/v1/webhooks/{webhook_id}", "Delete a webhook endpoint and its deliveries", "webhooks",
              responses={204: None, 404: "Error"}),
    Operation("POST", "/v1/webhooks/{webhook_id}/rotate-secret",
              "Replace the secret; the old one also signs for 24 hours", "webhooks",
              responses={200: "Webhook", 404: "Error"}),
    Operation("POST", "/v1/webhooks/{webhook_id}/test", "Queue a webhook.test event for this endpoint", "webhooks",
              responses={202: "WebhookDelivery", 404: "Error"}),
    Operation("GET", "/v1/webhooks/{webhook_id}/deliveries", "List an endpoint's deliveries, newest first",
              "webhooks", responses={200: _object(["deliveries"], deliveries={"type": "array",
                                                                             "items": _ref("WebhookDelivery")}),
                                     400: "Error", 404: "Error"}),
    Operation("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
              "Attempt a pending or failed delivery now", "webhooks",
              responses={202: "WebhookDelivery", 404: "Error", 409: "Error"}),
    Operation("POST", "/v1/principal-sessions", "Create a principal dashboard session", "principals",
              request=_object(["principalId"], principalId=_STRING, expiresIn=_STRING),
              responses={201: _ANY_OBJECT, 404: "Error"}),
    Operation("GET", "/v1/principal/grants", "The principal's active grants", "principals", "session",
              responses={200: _ANY_OBJECT, 401: "Error"}),
    Operation("GET", "/v1/principal/audit", "The principal's recent audit entries", "principals", "session",
              responses={200: _ANY_OBJECT, 401: "Error"}),
    Operation("DELETE", "/v1/principal/grants/{grant_id}", "Revoke one of the principal's grants", "principals",
              "session", responses={204: None, 404: "Error"}),
)


def _response(schema: str | dict[str, Any] | None, content_type: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": "See the schema"}
    if schema is not None:
        response["content"] = {content_type: {"schema": _ref(schema) if isinstance(schema, str) else schema}}
    elif content_type != "application/json":
        response["content"] = {content_type: {"schema": _STRING}}
    return response


def build_document(public_base_url: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        item: dict[str, Any] = {
            "summary": operation.summary,
            "tags": [operation.tag],
            "operationId": f"{operation.method.lower()}_{operation.path.strip('/').replace('/', '_')}",
            "security": {
                "apiKey": [{"apiKey": []}],
                "session": [{"principalSession": []}],
                "metrics": [{"metricsKey": []}, {}],
                "none": [],
            }[operation.auth],
            "responses": {
                str(status): _response(schema, operation.content_type if status < 400 else "application/json")
                for status, schema in operation.responses.items()
            },
        }
        parameters = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": _STRING}
            for part in operation.path.split("/")
            if part.startswith("{")
        ]
        if parameters:
            item["parameters"] = parameters
        if operation.request is not None:
            schema = _ref(operation.request) if isinstance(operation.request, str) else operation.request
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        paths.setdefault(operation.path, {})[operation.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "grantexd", "version": __version__, "description": "Grantex delegated authorization"},
        "servers": [{"url": public_base_url}],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A developer API key"},
                "principalSession": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "metricsKey": {"type": "http", "scheme": "bearer", "description": "METRICS_API_KEY, when set"},
            },
        },
    }


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("openapi", __name__)
    document = build_document(services.config.public_base_url)

    @blueprint.get("/openapi.json")
    async def openapi() -> Response:
        return json_response(document)

    return blueprint
