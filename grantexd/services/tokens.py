"""Grant token issuance (code exchange) and online verification."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from grantexd.crypto.hashing import constant_time_equal, new_refresh_token, pkce_s256_challenge, sha256_hex
from grantexd.crypto.ids import new_id
from grantexd.crypto.tokens import sign_jwt
from grantexd.errors import BadRequest, PlanLimitExceeded
from grantexd.logging import get_logger
from grantexd.services import webhooks
from grantexd.services.context import Services
from grantexd.services.plans import plan_limits, plan_name
from grantexd.services.timefmt import parse_duration, to_iso_from_epoch
from grantexd.services.verification import check_grant_token
from grantexd.store import auth_requests as request_store
from grantexd.store import grants as grant_store
from grantexd.store.database import Transaction
from grantexd.store.developers import Developer
from grantexd.store.grants import NewGrant

log = get_logger()

_GRANT_QUOTA_LOCK = 3
_PKCE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_CREDENTIAL_FORMATS = ("jwt", "vc-jwt", "sd-jwt", "both", "agent-passport")
REFRESH_TOKEN_LIFETIME = timedelta(days=30)


@dataclass(frozen=True)
class IssuedGrant:
    grant_token: str
    expires_at: datetime
    scopes: list[str]
    refresh_token: str
    grant_id: str
    token_id: str


@dataclass(frozen=True)
class GrantClaims:
    """The contents of a new grant and of its first token."""

    agent_id: str
    agent_did: str
    principal_id: str
    developer_id: str
    scopes: list[str]
    expires_at: datetime
    audience: str | None
    parent_agent_did: str | None = None
    parent_grant_id: str | None = None
    delegation_depth: int = 0


def build_claims(
    services: Services, claims: GrantClaims, grant_id: str, jti: str, issued_at: datetime
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "agt": claims.agent_did,
        "dev": claims.developer_id,
        "scp": claims.scopes,
        "grnt": grant_id,
    }
    if claims.parent_agent_did is not None:
        payload["parentAgt"] = claims.parent_agent_did
        payload["parentGrnt"] = claims.parent_grant_id
    if claims.delegation_depth > 0:
        payload["delegationDepth"] = claims.delegation_depth
    payload.update(
        {
            "iss": services.config.jwt_issuer,
            "sub": claims.principal_id,
            "jti": jti,
            "iat": int(issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
        }
    )
    if claims.audience:
        payload["aud"] = claims.audience
    return payload


async def insert_grant_with_tokens(services: Services, tx: Transaction, claims: GrantClaims) -> IssuedGrant:
    """Insert a grant, sign its first token and create its refresh token, inside ``tx``."""
    now = services.now()
    grant_id = new_id("grnt")
    jti = new_id("tok")
    await grant_store.insert_grant(
        tx,
        NewGrant(
            id=grant_id,
            agent_id=claims.agent_id,
            principal_id=claims.principal_id,
            developer_id=claims.developer_id,
            scopes=claims.scopes,
            issued_at=now,
            expires_at=claims.expires_at,
            audience=claims.audience,
            parent_grant_id=claims.parent_grant_id,
            delegation_depth=claims.delegation_depth,
        ),
    )
    key_set = services.keys
    grant_token = sign_jwt(key_set, build_claims(services, claims, grant_id, jti, now))
    await grant_store.insert_grant_token(tx, jti, grant_id, claims.expires_at, key_set.active.kid)
    refresh_token = new_refresh_token()
    await grant_store.insert_refresh_token(
        tx,
        new_id("rtk"),
        sha256_hex(refresh_token),
        grant_id,
        min(now + REFRESH_TOKEN_LIFETIME, claims.expires_at),
    )
    # The events commit or roll back with the grant.
    await webhooks.enqueue_grant_created(
        tx,
        claims.developer_id,
        grant_id=grant_id,
        agent_id=claims.agent_id,
        principal_id=claims.principal_id,
        scopes=claims.scopes,
        expires_at=claims.expires_at,
        parent_grant_id=claims.parent_grant_id,
        delegation_depth=claims.delegation_depth,
    )
    await webhooks.enqueue_token_issued(
        tx,
        claims.developer_id,
        token_id=jti,
        grant_id=grant_id,
        agent_id=claims.agent_id,
        principal_id=claims.principal_id,
        scopes=claims.scopes,
        expires_at=claims.expires_at,
    )
    return IssuedGrant(
        grant_token=grant_token,
        expires_at=claims.expires_at,
        scopes=claims.scopes,
        refresh_token=refresh_token,
        grant_id=grant_id,
        token_id=jti,
    )


async def exchange_code(services: Services, developer: Developer, body: object) -> IssuedGrant:
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    code = body.get("code")
    agent_id = body.get("agentId")
    if (
        not isinstance(code, str)
        or not 1 <= len(code) <= 512
        or not isinstance(agent_id, str)
        or not 1 <= len(agent_id) <= 256
    ):
        raise BadRequest("code and agentId are required")
    code_verifier = body.get("codeVerifier")
    if code_verifier is not None and not isinstance(code_verifier, str):
        raise BadRequest("codeVerifier must be a string")
    credential_format = body.get("credentialFormat")
    if credential_format is not None and credential_format not in _CREDENTIAL_FORMATS:
        raise BadRequest("Invalid credentialFormat")
    # TODO: only the plain JWT is issued; vc-jwt, sd-jwt and agent-passport extras are omitted,
    # which the protocol allows ("best effort and omitted on failure").

    limits = plan_limits(developer.plan)
    async with services.db.transaction() as tx:
        # The row lock makes redemption single-use: a concurrent exchange of the same code
        # waits here, then sees status 'consumed' and fails.
        request = await request_store.lock_for_exchange(tx, developer.id, code, agent_id)
        if request is None:
            raise BadRequest("Invalid code")
        if request.status != "approved":
            raise BadRequest("Auth request not approved")
        now = services.now()
        if request.expires_at < now:
            raise BadRequest("Auth request expired")
        if request.code_challenge is not None:
            if code_verifier is None:
                raise BadRequest("codeVerifier is required for PKCE")
            if not _PKCE_VERIFIER.fullmatch(code_verifier) or not constant_time_equal(
                pkce_s256_challenge(code_verifier), request.code_challenge
            ):
                raise BadRequest("Invalid codeVerifier")
        duration = parse_duration(request.expires_in) or timedelta(hours=24)

        await tx.advisory_lock(developer.id, _GRANT_QUOTA_LOCK)
        if limits.active_grants is not None:
            if await grant_store.count_active_grants(tx, developer.id) >= limits.active_grants:
                raise PlanLimitExceeded(
                    f"Plan limit reached: {plan_name(developer.plan)} plan allows "
                    f"{limits.active_grants} active grant(s)"
                )

        agent_did = f"did:grantex:{request.agent_id}"
        issued = await insert_grant_with_tokens(
            services,
            tx,
            GrantClaims(
                agent_id=request.agent_id,
                agent_did=agent_did,
                principal_id=request.principal_id,
                developer_id=developer.id,
                scopes=request.scopes,
                # JWT expiry has whole seconds, so the stored expiry is cut to the same second.
                expires_at=(now + duration).replace(microsecond=0),
                audience=request.audience,
            ),
        )
        await request_store.mark_consumed(tx, request.id)
    log.info(
        "token.issued",
        developerId=developer.id,
        grantId=issued.grant_id,
        tokenId=issued.token_id,
        via="exchange",
    )
    return issued


@dataclass(frozen=True)
class VerifyResult:
    valid: bool
    claims: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        if not self.valid or self.claims is None:
            return {"valid": False}
        return {
            "valid": True,
            "grantId": self.claims["grnt"],
            "scopes": self.claims["scp"],
            "principal": self.claims["sub"],
            "agent": self.claims["agt"],
            "expiresAt": to_iso_from_epoch(int(self.claims["exp"])),
        }


async def verify_token(services: Services, developer: Developer, body: object) -> VerifyResult:
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise BadRequest("token is required")
    check = await check_grant_token(services, token, developer.id)
    log.debug("token.verified", developerId=developer.id, valid=check.valid, reason=check.reason)
    return VerifyResult(valid=check.valid, claims=check.claims)
