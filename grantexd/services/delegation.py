"""Delegation of a grant to a sub-agent, and ``/v1/grants/verify``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from grantexd.errors import BadRequest, DelegationDepthExceeded, Forbidden, NotFound
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.services.revocation import REVOCATION_LOCK
from grantexd.services.timefmt import parse_duration
from grantexd.services.tokens import GrantClaims, IssuedGrant, insert_grant_with_tokens
from grantexd.services.verification import check_grant_token
from grantexd.store import agents as agent_store
from grantexd.store import grants as grant_store
from grantexd.store.developers import Developer

log = get_logger()

_DELEGATION_FORMATS = ("jwt", "vc-jwt", "both")

_PARENT_FAILURES: dict[str, tuple[type[Exception], str]] = {
    "invalid": (BadRequest, "Invalid parentGrantToken"),
    "invalid_claims": (BadRequest, "Invalid parentGrantToken claims"),
    "not_found": (BadRequest, "Invalid parentGrantToken claims"),
    "wrong_developer": (Forbidden, "Parent grant belongs to a different developer"),
    "revoked": (BadRequest, "Parent grant has been revoked"),
    "expired": (BadRequest, "Parent grant has expired"),
}


def _is_missing(value: object) -> bool:
    """Return whether a field counts as absent: null, false, zero or an empty string.

    An empty list is present, so ``"scopes": []`` gets the message about the scope list.
    """
    return value is None or value is False or value == 0 or value == ""


def _check_delegated_scopes(value: object) -> list[str]:
    message = "scopes must contain 1 to 100 non-empty strings of at most 256 characters"
    if not isinstance(value, list) or not 1 <= len(value) <= 100:
        raise BadRequest(message)
    for scope in value:
        if not isinstance(scope, str) or not 1 <= len(scope) <= 256 or not scope.strip():
            raise BadRequest(message)
    # A repeated scope adds nothing, so the token lists each one once, in the order requested.
    return list(dict.fromkeys(value))


async def delegate(services: Services, developer: Developer, body: object) -> tuple[IssuedGrant, int]:
    """Issue a grant to a sub-agent from a parent grant token; return it with its depth."""
    if not isinstance(body, dict):
        raise BadRequest("parentGrantToken, subAgentId, and scopes are required")
    parent_token = body.get("parentGrantToken")
    sub_agent_id = body.get("subAgentId")
    scopes = body.get("scopes")
    if _is_missing(parent_token) or _is_missing(sub_agent_id) or _is_missing(scopes):
        raise BadRequest("parentGrantToken, subAgentId, and scopes are required")
    if not isinstance(parent_token, str) or not isinstance(sub_agent_id, str):
        raise BadRequest("parentGrantToken, subAgentId, and scopes are required")
    requested_scopes = _check_delegated_scopes(scopes)
    credential_format = body.get("credentialFormat")
    if credential_format is not None and credential_format not in _DELEGATION_FORMATS:
        raise BadRequest("credentialFormat must be jwt, vc-jwt, or both")

    check = await check_grant_token(services, parent_token, developer.id)
    if check.reason is not None:
        error_class, message = _PARENT_FAILURES[check.reason]
        raise error_class(message)
    parent = check.claims
    assert parent is not None

    depth_claim = parent.get("delegationDepth")
    parent_depth = depth_claim if isinstance(depth_claim, int) and not isinstance(depth_claim, bool) else 0
    maximum = services.config.max_delegation_depth
    if parent_depth + 1 > maximum:
        raise DelegationDepthExceeded(
            f"Delegation depth limit reached: chains may not exceed {maximum} hop(s)"
        )
    parent_scopes = set(parent["scp"])
    excess = [scope for scope in requested_scopes if scope not in parent_scopes]
    if excess:
        raise BadRequest(f"Requested scopes exceed parent grant scopes: {', '.join(excess)}")

    sub_agent = await agent_store.find_agent(services.db, developer.id, sub_agent_id)
    if sub_agent is None or sub_agent.status != "active":
        raise NotFound("Sub-agent not found")

    expires_in = body.get("expiresIn", "1h")
    duration = parse_duration("1h" if expires_in is None else expires_in)
    if duration is None:
        raise BadRequest('Invalid expiresIn format. Use e.g. "1h", "30m", or "1d".')
    now = services.now()
    parent_expiry = datetime.fromtimestamp(int(parent["exp"]), timezone.utc)
    expires_at = min((now + duration).replace(microsecond=0), parent_expiry)

    async with services.db.transaction() as tx:
        # Serialized with cascade revocation: once the parent is locked active here, a
        # revocation of it waits and then revokes this new child too.
        await tx.advisory_lock(developer.id, REVOCATION_LOCK)
        parent_grant = await grant_store.lock_active_grant(tx, developer.id, parent["grnt"])
        if parent_grant is None:
            raise BadRequest("Parent grant is no longer active")
        # A suspended agent cannot refresh its own grant, so it cannot hand it on either.
        if not await agent_store.lock_active_agent(tx, developer.id, parent_grant.agent_id):
            raise BadRequest("Parent grant's agent is suspended")
        if not await agent_store.lock_active_agent(tx, developer.id, sub_agent.id):
            raise NotFound("Sub-agent not found")
        issued = await insert_grant_with_tokens(
            services,
            tx,
            GrantClaims(
                agent_id=sub_agent.id,
                agent_did=sub_agent.did,
                principal_id=parent["sub"],
                developer_id=developer.id,
                scopes=requested_scopes,
                expires_at=expires_at,
                audience=None,
                parent_agent_did=parent["agt"],
                parent_grant_id=parent_grant.id,
                delegation_depth=parent_depth + 1,
            ),
        )
    log.info(
        "grant.delegated",
        developerId=developer.id,
        grantId=issued.grant_id,
        parentGrantId=parent_grant.id,
        delegationDepth=parent_depth + 1,
    )
    return issued, parent_depth + 1


async def verify_grant(services: Services, developer: Developer, body: object) -> dict[str, Any]:
    """Return the ``/v1/grants/verify`` body: ``active`` with claims, or the failure reason."""
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise BadRequest("token is required")
    check = await check_grant_token(services, token, developer.id)
    if check.reason in ("invalid", "invalid_claims"):
        raise BadRequest("Invalid token")
    if check.reason is not None:
        return {"active": False, "reason": check.reason}
    assert check.claims is not None
    return {"active": True, "claims": check.claims}
