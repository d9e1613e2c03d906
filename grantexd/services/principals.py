"""Principal sessions: short-lived tokens that let an end user see and revoke their grants."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from grantexd.crypto.tokens import TokenInvalid, decode_jwt, sign_jwt
from grantexd.errors import BadRequest, NotFound, Unauthorized
from grantexd.logging import get_logger
from grantexd.services import webhooks
from grantexd.services.context import Services
from grantexd.services.revocation import REVOCATION_LOCK, mark_grants_revoked
from grantexd.services.timefmt import parse_duration
from grantexd.store import grants as grant_store
from grantexd.store import principals as principal_store
from grantexd.store.developers import Developer

log = get_logger()

SESSION_PURPOSE = "principal_dashboard"
DEFAULT_SESSION_LIFETIME = timedelta(hours=1)
MAX_SESSION_LIFETIME = timedelta(hours=24)

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_SAFE_INTEGER = 2**53 - 1


@dataclass(frozen=True)
class PrincipalSession:
    developer_id: str
    principal_id: str


class SessionUnauthorized(Unauthorized):
    """A principal-session 401, whose body carries no requestId."""

    include_request_id = False


def _session_lifetime(expires_in: object) -> timedelta:
    """Parse a session ``expiresIn``, capping a well-formed value above 24 hours instead of rejecting it.

    ``parse_duration`` rejects values above its ten-year bound, so such values are matched here
    and capped as well. Values above 2**53 - 1 seconds, the largest integer a JSON number holds
    exactly, stay invalid, as in the reference server.
    """
    parsed = parse_duration(expires_in)
    if parsed is not None:
        return min(parsed, MAX_SESSION_LIFETIME)
    match = _DURATION.fullmatch(expires_in) if isinstance(expires_in, str) else None
    digits = match.group(1).lstrip("0") if match is not None else ""
    # The digit count is checked first, because int() refuses texts of more than 4300 digits.
    if (
        match is None
        or not digits
        or len(digits) > 16
        or int(digits) * _UNIT_SECONDS[match.group(2)] > _MAX_SAFE_INTEGER
    ):
        raise BadRequest('Invalid expiresIn format. Use e.g. "1h", "30m", "24h".')
    return MAX_SESSION_LIFETIME


async def create_session(services: Services, developer: Developer, body: object) -> dict[str, Any]:
    principal_id = body.get("principalId") if isinstance(body, dict) else None
    if not isinstance(principal_id, str) or not principal_id:
        raise BadRequest("principalId is required")
    expires_in = body.get("expiresIn") if isinstance(body, dict) else None
    lifetime = DEFAULT_SESSION_LIFETIME if expires_in is None else _session_lifetime(expires_in)
    if not await principal_store.has_active_grant(services.db, developer.id, principal_id):
        raise NotFound("No active grants found for this principal")
    now = services.now()
    expires_at = (now + lifetime).replace(microsecond=0)
    token = sign_jwt(
        services.keys,
        {
            "dev": developer.id,
            "purpose": SESSION_PURPOSE,
            "iss": services.config.jwt_issuer,
            "sub": principal_id,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
        },
    )
    log.info("principal_session.created", developerId=developer.id)
    return {
        "sessionToken": token,
        "dashboardUrl": f"{services.config.public_base_url}/permissions#session={quote(token, safe='')}",
        "expiresAt": expires_at,
    }


def authenticate_session(services: Services, authorization: str | None) -> PrincipalSession:
    if authorization is None or not authorization.startswith("Bearer "):
        raise SessionUnauthorized("Missing session token")
    token = authorization[len("Bearer "):]
    try:
        claims = decode_jwt(services.keys, token, services.config.jwt_issuer, services.now().timestamp())
    except TokenInvalid:
        raise SessionUnauthorized("Invalid or expired session token") from None
    developer_id = claims.get("dev")
    principal_id = claims.get("sub")
    if (
        claims.get("purpose") != SESSION_PURPOSE
        or not isinstance(developer_id, str)
        or not developer_id
        or not isinstance(principal_id, str)
        or not principal_id
    ):
        raise SessionUnauthorized("Invalid or expired session token")
    return PrincipalSession(developer_id=developer_id, principal_id=principal_id)


async def list_grants(services: Services, session: PrincipalSession) -> list[principal_store.PrincipalGrant]:
    return await principal_store.list_active_grants(services.db, session.developer_id, session.principal_id)


async def list_audit(services: Services, session: PrincipalSession) -> list[dict[str, Any]]:
    return await principal_store.recent_audit_entries(services.db, session.developer_id, session.principal_id)


async def revoke_grant(services: Services, session: PrincipalSession, grant_id: str) -> None:
    async with services.db.transaction() as tx:
        await tx.advisory_lock(session.developer_id, REVOCATION_LOCK)
        if not await principal_store.is_active_grant_of(tx, session.developer_id, session.principal_id, grant_id):
            raise NotFound("Grant not found")
        revoked = await grant_store.revoke_grant_cascade(tx, session.developer_id, grant_id)
        await webhooks.enqueue_grants_revoked(tx, session.developer_id, revoked)
    await mark_grants_revoked(services, revoked)
    log.info("grant.revoked", developerId=session.developer_id, grantId=grant_id, via="principal")
