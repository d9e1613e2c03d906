"""Sign and decode RS256 JWTs: grant tokens and principal session tokens."""

from __future__ import annotations

from typing import Any

import jwt

from grantexd.crypto.keys import KeySet
from grantexd.tracing import span


class TokenInvalid(Exception):
    """The token's signature, algorithm, issuer or expiry did not verify."""


def sign_jwt(key_set: KeySet, claims: dict[str, Any]) -> str:
    # The header carries alg and kid only, as the reference server's tokens do.
    key = key_set.active
    with span("jwt.sign", kid=key.kid):
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"kid": key.kid, "typ": None})


def decode_jwt(key_set: KeySet, token: str, issuer: str, now: float) -> dict[str, Any]:
    """Verify an RS256 token against the key set; expired when ``exp <= now`` (no leeway)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid(f"malformed token: {exc}") from None
    if header.get("alg") != "RS256":
        raise TokenInvalid("algorithm must be RS256")
    kid = header.get("kid")
    key = key_set.find(kid if isinstance(kid, str) else None)
    if key is None:
        raise TokenInvalid("unknown key id")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=["RS256"],
            issuer=issuer,
            options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise TokenInvalid(str(exc)) from None
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now:
        raise TokenInvalid("token has expired")
    return claims
