"""Authorization requests: creation, the consent decision, and the sandbox shortcuts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from grantexd.crypto.ids import new_id, new_ulid
from grantexd.errors import (
    BadRequest,
    ConsentRequired,
    FidoRequired,
    ForeignKeyViolation,
    Gone,
    NotFound,
    PlanLimitExceeded,
)
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.services.plans import plan_limits, plan_name
from grantexd.services.scopes import describe_scope
from grantexd.services.timefmt import parse_duration
from grantexd.services.validation import check_scope_list, redirect_uri_problem
from grantexd.store import agents as agent_store
from grantexd.store import auth_requests as request_store
from grantexd.store.auth_requests import AuthRequest, ConsentView, NewAuthRequest
from grantexd.store.developers import Developer
from grantexd.store.grants import count_active_grants

log = get_logger()

_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class AuthorizeResult:
    request: AuthRequest
    consent_url: str
    sandbox: bool


def _optional_string(body: dict[str, object], field: str) -> object:
    value = body.get(field)
    return None if value is None else value


async def authorize(services: Services, developer: Developer, body: object) -> AuthorizeResult:
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")

    agent_id = body.get("agentId")
    principal_id = body.get("principalId")
    scopes = body.get("scopes")
    if (
        not isinstance(agent_id, str)
        or not 1 <= len(agent_id) <= 256
        or not isinstance(principal_id, str)
        or not 1 <= len(principal_id) <= 256
        or not isinstance(scopes, list)
        or not scopes
    ):
        raise BadRequest("agentId, principalId, and scopes are required")
    checked_scopes = check_scope_list(scopes)

    redirect_uri = _optional_string(body, "redirectUri")
    if redirect_uri is not None:
        if not isinstance(redirect_uri, str):
            raise BadRequest("Invalid redirectUri")
        problem = redirect_uri_problem(redirect_uri, services.config.is_production)
        if problem is not None:
            raise BadRequest(f"Invalid redirectUri: {problem}")

    state = _optional_string(body, "state")
    if state is not None and (not isinstance(state, str) or len(state) > 1024):
        raise BadRequest("state must be 1024 characters or fewer")
    audience = _optional_string(body, "audience")
    if audience is not None and (not isinstance(audience, str) or not 1 <= len(audience) <= 1024):
        raise BadRequest("audience must be a non-empty string of at most 1024 characters")

    code_challenge = _optional_string(body, "codeChallenge")
    code_challenge_method = _optional_string(body, "codeChallengeMethod")
    if (code_challenge is None) != (code_challenge_method is None):
        raise BadRequest("codeChallenge and codeChallengeMethod must be provided together")
    if code_challenge is not None and (
        code_challenge_method != "S256"
        or not isinstance(code_challenge, str)
        or not _S256_CHALLENGE.fullmatch(code_challenge)
    ):
        raise BadRequest("codeChallengeMethod must be S256 and codeChallenge must be a valid S256 digest")

    purpose = _optional_string(body, "purpose")
    if purpose is not None and (not isinstance(purpose, str) or len(purpose) > 1024):
        raise BadRequest("purpose must be a string of at most 1024 characters")

    limits = plan_limits(developer.plan)
    if limits.active_grants is not None:
        async with services.db.transaction() as tx:
            if await count_active_grants(tx, developer.id) >= limits.active_grants:
                raise PlanLimitExceeded(
                    f"Plan limit reached: {plan_name(developer.plan)} plan allows "
                    f"{limits.active_grants} active grant(s). Upgrade at /v1/billing/checkout"
                )

    agent = await agent_store.find_agent(services.db, developer.id, agent_id)
    if agent is None or agent.status != "active":
        raise NotFound("Agent not found")
    if redirect_uri is not None and agent.redirect_uris and redirect_uri not in agent.redirect_uris:
        raise BadRequest("Invalid redirectUri: it must exactly match one of the agent's registered redirectUris")

    # TODO: policy evaluation (allow/deny rules) is not implemented yet, so a live request
    # always waits for consent and no request is denied by policy.

    expires_in_value = body.get("expiresIn")
    expires_in = "24h" if expires_in_value is None else expires_in_value
    duration = parse_duration(expires_in)
    if duration is None:
        raise BadRequest('Invalid expiresIn format. Use e.g. "1h", "30m", "24h".')

    sandbox = developer.mode == "sandbox"
    now = services.now()
    new_request = NewAuthRequest(
        id=new_id("areq"),
        agent_id=agent.id,
        principal_id=principal_id,
        developer_id=developer.id,
        scopes=checked_scopes,
        redirect_uri=redirect_uri,
        state=state,  # type: ignore[arg-type]
        expires_in=str(expires_in),
        expires_at=now + duration,
        status="approved" if sandbox else "pending",
        code=new_ulid() if sandbox else None,
        audience=audience,  # type: ignore[arg-type]
        code_challenge=code_challenge,  # type: ignore[arg-type]
        code_challenge_method=code_challenge_method,  # type: ignore[arg-type]
        purpose=purpose,  # type: ignore[arg-type]
    )
    try:
        request = await request_store.insert_auth_request(services.db, new_request)
    except ForeignKeyViolation:
        # The agent was deleted between the lookup above and this insert.
        raise NotFound("Agent not found") from None
    log.info(
        "authorization.created",
        developerId=developer.id,
        authRequestId=request.id,
        agentId=agent.id,
        outcome="approved" if sandbox else "pending",
    )
    services.metrics.authorizations.labels("approved" if sandbox else "pending").inc()
    consent_url = f"{services.config.public_base_url}/consent?req={request.id}"
    return AuthorizeResult(request=request, consent_url=consent_url, sandbox=sandbox)


@dataclass(frozen=True)
class ConsentDetails:
    view: ConsentView
    scope_descriptions: list[str]


async def get_consent(services: Services, request_id: str) -> ConsentDetails:
    view = await request_store.find_consent_view(services.db, request_id)
    if view is None:
        raise NotFound("Auth request not found")
    if view.request.expires_at <= services.now() or view.request.status != "pending":
        raise Gone("Auth request expired or already processed")
    return ConsentDetails(view=view, scope_descriptions=[describe_scope(scope) for scope in view.request.scopes])


async def _waits_for_fido(services: Services, request_id: str) -> bool:
    """Tell whether a decision failed only because the developer requires FIDO verification first."""
    view = await request_store.find_consent_view(services.db, request_id)
    return (
        view is not None
        and view.request.status == "pending"
        and view.request.expires_at > services.now()
        and view.fido_required
        and not view.request.fido_verified
    )


async def approve_consent(services: Services, request_id: str) -> AuthRequest:
    request = await request_store.approve_pending(services.db, request_id, new_ulid(), developer_id=None)
    if request is not None:
        log.info("authorization.approved", authRequestId=request_id, via="consent")
        services.metrics.authorizations.labels("approved").inc()
        return request
    if await _waits_for_fido(services, request_id):
        raise FidoRequired("FIDO verification required before approval")
    raise Gone("Auth request expired or already processed")


async def deny_consent(services: Services, request_id: str) -> AuthRequest:
    request = await request_store.deny_pending(services.db, request_id, developer_id=None, require_unexpired=False)
    if request is not None:
        log.info("authorization.denied", authRequestId=request_id, via="consent")
        services.metrics.authorizations.labels("denied").inc()
        return request
    if await _waits_for_fido(services, request_id):
        raise FidoRequired("FIDO verification required before denial")
    raise NotFound("Auth request not found or already processed")


async def approve_sandbox(services: Services, developer: Developer, request_id: str) -> AuthRequest:
    if developer.mode != "sandbox":
        raise ConsentRequired("Live authorization requests must be approved through the consent flow")
    request = await request_store.approve_pending(services.db, request_id, new_ulid(), developer_id=developer.id)
    if request is None:
        raise NotFound("Auth request not found or already processed")
    log.info("authorization.approved", authRequestId=request_id, via="sandbox")
    return request


async def deny_sandbox(services: Services, developer: Developer, request_id: str) -> AuthRequest:
    if developer.mode != "sandbox":
        raise ConsentRequired("Live authorization requests must be denied through the consent flow")
    request = await request_store.deny_pending(services.db, request_id, developer_id=developer.id, require_unexpired=True)
    if request is None:
        raise NotFound("Auth request not found or already processed")
    log.info("authorization.denied", authRequestId=request_id, via="sandbox")
    return request
