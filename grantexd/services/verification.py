"""Server-side grant token checks, shared by token verify, grant verify and delegation.

The steps run in this order, and the first failure names the reason: the signature, issuer
and expiry (``invalid``); the required claims (``invalid_claims``); the developer
(``wrong_developer``); the Redis revocation marks (``revoked``); the database row
(``not_found``, ``revoked``, ``expired``). Redis can only add a "revoked" verdict: its
absence, or an outage, never makes a token valid, because the database is always read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from grantexd.crypto.tokens import TokenInvalid, decode_jwt
from grantexd.services.context import Services
from grantexd.store import grants as grant_store
from grantexd.store.redis import RedisUnavailable, revoked_grant_key, revoked_token_key

Reason = Literal["invalid", "invalid_claims", "wrong_developer", "revoked", "not_found", "expired"]

_REQUIRED_STRING_CLAIMS = ("sub", "agt", "dev", "jti")


@dataclass(frozen=True)
class TokenCheck:
    claims: dict[str, Any] | None
    reason: Reason | None

    @property
    def valid(self) -> bool:
        return self.reason is None


def _has_required_claims(claims: dict[str, Any]) -> bool:
    for name in _REQUIRED_STRING_CLAIMS:
        if not isinstance(claims.get(name), str) or not claims[name]:
            return False
    scopes = claims.get("scp")
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        return False
    for name in ("iat", "exp"):
        value = claims.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
    return True


async def check_grant_token(services: Services, token: str, developer_id: str) -> TokenCheck:
    now = services.now()
    try:
        claims = decode_jwt(services.keys, token, services.config.jwt_issuer, now.timestamp())
    except TokenInvalid:
        return TokenCheck(claims=None, reason="invalid")
    if not _has_required_claims(claims):
        return TokenCheck(claims=None, reason="invalid_claims")
    grnt = claims.get("grnt")
    grant_id: str = grnt if isinstance(grnt, str) else claims["jti"]
    claims["grnt"] = grant_id
    if claims["dev"] != developer_id:
        return TokenCheck(claims=claims, reason="wrong_developer")

    try:
        if await services.redis.exists_any(revoked_token_key(claims["jti"]), revoked_grant_key(grant_id)):
            return TokenCheck(claims=claims, reason="revoked")
    except RedisUnavailable:
        pass  # The database below is authoritative; Redis only speeds up the common revoked case.

    record = await grant_store.find_token_record(services.db, developer_id, claims["jti"])
    if record is None:
        return TokenCheck(claims=claims, reason="not_found")
    if record.is_revoked or record.grant_status != "active":
        return TokenCheck(claims=claims, reason="revoked")
    if record.expires_at < now:
        return TokenCheck(claims=claims, reason="expired")
    return TokenCheck(claims=claims, reason=None)
