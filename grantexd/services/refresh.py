"""Refresh-token rotation with reuse detection and idempotent retries.

Each refresh token is single use: a successful refresh marks it used and issues a new one. A
used token presented again means two parties hold it, so the grant and its descendants are
revoked (the OAuth 2.0 security best current practice). The official Python SDK retries a
refresh with the same ``Idempotency-Key`` after a network error or a 5xx, so a retry with the
same key and the same token replays the original response instead of counting as reuse.

The replayed response contains new bearer tokens, so it is stored encrypted with AES-GCM under
a key derived (HKDF-SHA256) from the presented refresh token. Only the holder of that token can
read it back; the database alone cannot.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from grantexd.crypto.hashing import new_refresh_token, sha256_hex
from grantexd.crypto.ids import new_id
from grantexd.crypto.tokens import sign_jwt
from grantexd.errors import BadRequest
from grantexd.logging import get_logger
from grantexd.services import webhooks
from grantexd.services.context import Services
from grantexd.services.revocation import REVOCATION_LOCK, mark_grants_revoked
from grantexd.services.timefmt import to_iso
from grantexd.services.tokens import REFRESH_TOKEN_LIFETIME, GrantClaims, build_claims
from grantexd.store import grants as grant_store
from grantexd.store.developers import Developer
from grantexd.store.grants import RevokedGrant

log = get_logger()

# Longer than the SDK's retry window (5 minutes), so every retry it makes finds its replay.
REPLAY_LIFETIME = timedelta(minutes=10)
MAX_IDEMPOTENCY_KEY_LENGTH = 255


def _replay_cipher(refresh_token: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"grantexd refresh replay").derive(
        refresh_token.encode()
    )
    return AESGCM(key)


def _lookup_hash(developer_id: str, idempotency_key: str, refresh_token: str) -> str:
    return sha256_hex(f"{developer_id}\n{idempotency_key}\n{refresh_token}")


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_LENGTH or not value.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters"
        )
    return value


class _ReuseDetected(Exception):
    """A used refresh token was presented again without a matching idempotent retry."""


async def refresh_grant(
    services: Services, developer: Developer, body: object, idempotency_key: str | None
) -> dict[str, Any]:
    """Rotate a refresh token and return the response body for ``POST /v1/token/refresh``."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    refresh_token = body.get("refreshToken")
    agent_id = body.get("agentId")
    if (
        not isinstance(refresh_token, str)
        or not 1 <= len(refresh_token) <= 512
        or not isinstance(agent_id, str)
        or not 1 <= len(agent_id) <= 256
    ):
        raise BadRequest("refreshToken and agentId are required")
    key = check_idempotency_key(idempotency_key)
    lookup = _lookup_hash(developer.id, key, refresh_token) if key is not None else None

    try:
        async with services.db.transaction() as tx:
            record = await grant_store.lock_refresh_token(tx, developer.id, sha256_hex(refresh_token))
            if record is None or record.agent_status != "active":
                raise BadRequest("Invalid refresh token")
            if record.grant.agent_id != agent_id:
                raise BadRequest("Agent mismatch")

            # Checked under the row lock, so a concurrent retry with the same key waits for the
            # first request to commit and then finds its stored response.
            if lookup is not None:
                stored = await grant_store.find_replay(tx, lookup)
                # A replay repeats a response only while the grant still stands: after a
                # revocation the retry gets the same error a fresh refresh would.
                if stored is not None and record.grant.status == "revoked":
                    raise BadRequest("Grant has been revoked")
                if stored is not None:
                    nonce, ciphertext = stored
                    try:
                        replayed: dict[str, Any] = json.loads(
                            _replay_cipher(refresh_token).decrypt(nonce, ciphertext, lookup.encode())
                        )
                    except InvalidTag:
                        raise BadRequest("Invalid refresh token") from None
                    log.info("token.refresh.replayed", developerId=developer.id, grantId=record.grant.id)
                    return replayed

            now = services.now()
            if record.is_used:
                # Raising rolls this transaction back; the revocation runs in its own
                # transaction below, which commits before the 400 is sent.
                raise _ReuseDetected()
            if record.expires_at < now:
                raise BadRequest("Refresh token expired")
            grant = record.grant
            if grant.status == "revoked":
                raise BadRequest("Grant has been revoked")
            if grant.status != "active":
                raise BadRequest("Grant is not active")
            if grant.expires_at <= now:
                raise BadRequest("Grant has expired")

            claims = GrantClaims(
                agent_id=grant.agent_id,
                agent_did=grant.agent_did,
                principal_id=grant.principal_id,
                developer_id=developer.id,
                scopes=grant.scopes,
                expires_at=grant.expires_at,
                audience=grant.audience,
                parent_agent_did=record.parent_agent_did if grant.parent_grant_id else None,
                parent_grant_id=grant.parent_grant_id,
                delegation_depth=grant.delegation_depth,
            )
            jti = new_id("tok")
            key_set = services.keys
            grant_token = sign_jwt(key_set, build_claims(services, claims, grant.id, jti, now))
            await grant_store.mark_refresh_used(tx, record.id)
            await grant_store.insert_grant_token(tx, jti, grant.id, grant.expires_at, key_set.active.kid)
            await webhooks.enqueue_token_issued(
                tx,
                developer.id,
                token_id=jti,
                grant_id=grant.id,
                agent_id=grant.agent_id,
                principal_id=grant.principal_id,
                scopes=grant.scopes,
                expires_at=grant.expires_at,
            )
            new_token = new_refresh_token()
            await grant_store.insert_refresh_token(
                tx,
                new_id("rtk"),
                sha256_hex(new_token),
                grant.id,
                min(now + REFRESH_TOKEN_LIFETIME, grant.expires_at),
            )
            response = {
                "grantToken": grant_token,
                "expiresAt": to_iso(grant.expires_at),
                "scopes": grant.scopes,
                "refreshToken": new_token,
                "grantId": grant.id,
            }
            if lookup is not None:
                nonce = os.urandom(12)
                ciphertext = _replay_cipher(refresh_token).encrypt(
                    nonce, json.dumps(response).encode(), lookup.encode()
                )
                await grant_store.insert_replay(tx, lookup, developer.id, nonce, ciphertext, now + REPLAY_LIFETIME)
    except _ReuseDetected:
        revoked = await _revoke_after_reuse(services, developer.id, body)
        log.warning("token.refresh.reused", developerId=developer.id, revokedGrants=[grant.id for grant in revoked])
        raise BadRequest("Refresh token already used") from None
    log.info("token.issued", developerId=developer.id, grantId=grant.id, tokenId=jti, via="refresh")
    return response


async def _revoke_after_reuse(services: Services, developer_id: str, body: dict[str, Any]) -> list[RevokedGrant]:
    async with services.db.transaction() as tx:
        record = await grant_store.lock_refresh_token(tx, developer_id, sha256_hex(body["refreshToken"]))
        if record is None:
            return []
        await tx.advisory_lock(developer_id, REVOCATION_LOCK)
        revoked = await grant_store.revoke_grant_cascade(tx, developer_id, record.grant.id)
        await webhooks.enqueue_grants_revoked(tx, developer_id, revoked)
    await mark_grants_revoked(services, revoked)
    return revoked
