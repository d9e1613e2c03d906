"""Revocation of grants (with cascade) and of single tokens."""

from __future__ import annotations

from datetime import datetime

from grantexd.errors import BadRequest, NotFound
from grantexd.logging import get_logger
from grantexd.services import webhooks
from grantexd.services.context import Services
from grantexd.store import grants as grant_store
from grantexd.store.grants import RevokedGrant
from grantexd.store.redis import RedisUnavailable, revoked_grant_key, revoked_token_key

log = get_logger()

# Advisory lock purpose shared by cascade revocation and delegation, so a delegation cannot
# attach a child to a parent that a concurrent revocation is about to revoke.
REVOCATION_LOCK = 4


def _seconds_left(services: Services, expires_at: datetime) -> int:
    return max(1, int((expires_at - services.now()).total_seconds()))


async def revoke_grant(services: Services, developer_id: str, grant_id: str) -> list[RevokedGrant]:
    """Revoke a grant and all its descendants in one transaction, then mark them in Redis."""
    async with services.db.transaction() as tx:
        await tx.advisory_lock(developer_id, REVOCATION_LOCK)
        revoked = await grant_store.revoke_grant_cascade(tx, developer_id, grant_id)
        await webhooks.enqueue_grants_revoked(tx, developer_id, revoked)
    if not revoked:
        raise NotFound("Grant not found or already revoked")
    await mark_grants_revoked(services, revoked)
    log.info("grant.revoked", developerId=developer_id, grantId=grant_id, descendants=len(revoked) - 1)
    return revoked


async def mark_grants_revoked(services: Services, revoked: list[RevokedGrant]) -> None:
    """Set the Redis revocation marks after the database commit; best effort."""
    services.metrics.grants_revoked.inc(len(revoked))
    for grant in revoked:
        try:
            await services.redis.set_with_ttl(
                revoked_grant_key(grant.id), "1", _seconds_left(services, grant.expires_at)
            )
        except RedisUnavailable:
            # The database already says revoked, and verification always reads it.
            break


async def revoke_token(services: Services, developer_id: str, body: object) -> None:
    jti = body.get("jti") if isinstance(body, dict) else None
    if not isinstance(jti, str) or not jti or len(jti) > 512:
        raise BadRequest("jti is required")
    expires_at = await grant_store.revoke_token(services.db, developer_id, jti)
    if expires_at is None:
        raise NotFound("Token not found or already revoked")
    try:
        await services.redis.set_with_ttl(revoked_token_key(jti), "1", _seconds_left(services, expires_at))
    except RedisUnavailable:
        pass  # The database row is authoritative.
    log.info("token.revoked", developerId=developer_id, tokenId=jti)
