"""Grants, the grant tokens issued for them, and their refresh tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from grantexd.store.database import Database, Transaction


@dataclass(frozen=True)
class Grant:
    id: str
    agent_id: str
    agent_did: str
    principal_id: str
    developer_id: str
    scopes: list[str]
    status: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    parent_grant_id: str | None
    delegation_depth: int
    audience: str | None


_SELECT = """
    SELECT g.id, g.agent_id, a.did AS agent_did, g.principal_id, g.developer_id, g.scopes, g.status,
           g.issued_at, g.expires_at, g.revoked_at, g.parent_grant_id, g.delegation_depth, g.audience
    FROM grants g JOIN agents a ON a.id = g.agent_id
"""


def _grant(row: asyncpg.Record) -> Grant:
    return Grant(
        id=row["id"],
        agent_id=row["agent_id"],
        agent_did=row["agent_did"],
        principal_id=row["principal_id"],
        developer_id=row["developer_id"],
        scopes=list(row["scopes"]),
        status=row["status"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        parent_grant_id=row["parent_grant_id"],
        delegation_depth=row["delegation_depth"],
        audience=row["audience"],
    )


async def count_active_grants(tx: Transaction, developer_id: str) -> int:
    count: int = await tx.fetchval(
        "SELECT count(*) FROM grants WHERE developer_id = $1 AND status = 'active' AND expires_at > now()",
        developer_id,
    )
    return count


@dataclass(frozen=True)
class NewGrant:
    id: str
    agent_id: str
    principal_id: str
    developer_id: str
    scopes: list[str]
    issued_at: datetime
    expires_at: datetime
    audience: str | None
    parent_grant_id: str | None = None
    delegation_depth: int = 0


async def insert_grant(tx: Transaction, new: NewGrant) -> None:
    await tx.execute(
        """
        INSERT INTO grants (id, agent_id, principal_id, developer_id, scopes, issued_at, expires_at,
                            audience, parent_grant_id, delegation_depth)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        new.id,
        new.agent_id,
        new.principal_id,
        new.developer_id,
        new.scopes,
        new.issued_at,
        new.expires_at,
        new.audience,
        new.parent_grant_id,
        new.delegation_depth,
    )


async def insert_grant_token(tx: Transaction, jti: str, grant_id: str, expires_at: datetime, kid: str) -> None:
    await tx.execute(
        "INSERT INTO grant_tokens (jti, grant_id, expires_at, kid) VALUES ($1, $2, $3, $4)",
        jti,
        grant_id,
        expires_at,
        kid,
    )


async def insert_refresh_token(
    tx: Transaction, refresh_id: str, token_hash: str, grant_id: str, expires_at: datetime
) -> None:
    await tx.execute(
        "INSERT INTO refresh_tokens (id, token_hash, grant_id, expires_at) VALUES ($1, $2, $3, $4)",
        refresh_id,
        token_hash,
        grant_id,
        expires_at,
    )


@dataclass(frozen=True)
class GrantFilter:
    agent_id: str | None = None
    principal_id: str | None = None
    status: str | None = None


async def list_grants(
    db: Database, developer_id: str, filters: GrantFilter, limit: int | None, offset: int
) -> list[Grant]:
    rows = await db.fetch(
        _SELECT
        + """
        WHERE g.developer_id = $1
          AND ($2::text IS NULL OR g.agent_id = $2)
          AND ($3::text IS NULL OR g.principal_id = $3)
          AND ($4::text IS NULL OR g.status = $4)
        ORDER BY g.issued_at DESC, g.id DESC
        LIMIT $5 OFFSET $6
        """,
        developer_id,
        filters.agent_id,
        filters.principal_id,
        filters.status,
        limit,
        offset,
    )
    return [_grant(row) for row in rows]


async def find_grant(db: Database | Transaction, developer_id: str, grant_id: str) -> Grant | None:
    row = await db.fetchrow(_SELECT + " WHERE g.id = $1 AND g.developer_id = $2", grant_id, developer_id)
    return None if row is None else _grant(row)


@dataclass(frozen=True)
class RevokedGrant:
    id: str
    expires_at: datetime
    is_root: bool


async def revoke_grant_cascade(tx: Transaction, developer_id: str, grant_id: str) -> list[RevokedGrant]:
    """Revoke an active grant and every active descendant at any depth, in this transaction.

    Returns the revoked grants, the root first; an empty list means the root was not an
    active grant of this developer and nothing changed.
    """
    rows = await tx.fetch(
        """
        WITH RECURSIVE root AS (
            UPDATE grants SET status = 'revoked', revoked_at = now()
            WHERE id = $1 AND developer_id = $2 AND status = 'active'
            RETURNING id, expires_at
        ), descendants AS (
            SELECT g.id FROM grants g JOIN root ON g.parent_grant_id = root.id
            WHERE g.developer_id = $2
            UNION
            SELECT g.id FROM grants g JOIN descendants d ON g.parent_grant_id = d.id
            WHERE g.developer_id = $2
        ), revoked_descendants AS (
            UPDATE grants SET status = 'revoked', revoked_at = now()
            WHERE id IN (SELECT id FROM descendants) AND status = 'active'
              AND EXISTS (SELECT 1 FROM root)
            RETURNING id, expires_at
        )
        SELECT id, expires_at, TRUE AS is_root FROM root
        UNION ALL
        SELECT id, expires_at, FALSE AS is_root FROM revoked_descendants
        """,
        grant_id,
        developer_id,
    )
    revoked = [RevokedGrant(id=row["id"], expires_at=row["expires_at"], is_root=row["is_root"]) for row in rows]
    revoked.sort(key=lambda grant: not grant.is_root)
    return revoked


@dataclass(frozen=True)
class TokenRecord:
    jti: str
    is_revoked: bool
    expires_at: datetime
    grant_status: str


async def find_token_record(db: Database, developer_id: str, jti: str) -> TokenRecord | None:
    row = await db.fetchrow(
        """
        SELECT t.jti, t.is_revoked, t.expires_at, g.status AS grant_status
        FROM grant_tokens t JOIN grants g ON g.id = t.grant_id
        WHERE t.jti = $1 AND g.developer_id = $2
        """,
        jti,
        developer_id,
    )
    if row is None:
        return None
    return TokenRecord(
        jti=row["jti"], is_revoked=row["is_revoked"], expires_at=row["expires_at"], grant_status=row["grant_status"]
    )


async def revoke_token(db: Database, developer_id: str, jti: str) -> datetime | None:
    """Mark one token revoked; return its expiry, or None if it was unknown or already revoked."""
    row = await db.fetchrow(
        """
        UPDATE grant_tokens t SET is_revoked = TRUE
        FROM grants g
        WHERE t.jti = $1 AND g.id = t.grant_id AND g.developer_id = $2 AND NOT t.is_revoked
        RETURNING t.expires_at
        """,
        jti,
        developer_id,
    )
    return None if row is None else row["expires_at"]


@dataclass(frozen=True)
class RefreshRecord:
    id: str
    grant: Grant
    is_used: bool
    expires_at: datetime
    agent_status: str
    parent_agent_did: str | None


async def lock_refresh_token(tx: Transaction, developer_id: str, token_hash: str) -> RefreshRecord | None:
    """Find and lock a refresh token of this developer, with its grant and agent."""
    row = await tx.fetchrow(
        """
        SELECT r.id AS refresh_id, r.is_used, r.expires_at AS refresh_expires_at,
               g.id, g.agent_id, a.did AS agent_did, g.principal_id, g.developer_id, g.scopes, g.status,
               g.issued_at, g.expires_at, g.revoked_at, g.parent_grant_id, g.delegation_depth, g.audience,
               a.status AS agent_status, pa.did AS parent_agent_did
        FROM refresh_tokens r
        JOIN grants g ON g.id = r.grant_id
        JOIN agents a ON a.id = g.agent_id
        LEFT JOIN grants pg ON pg.id = g.parent_grant_id
        LEFT JOIN agents pa ON pa.id = pg.agent_id
        WHERE r.token_hash = $1 AND g.developer_id = $2
        FOR UPDATE OF r FOR SHARE OF a
        """,
        token_hash,
        developer_id,
    )
    if row is None:
        return None
    return RefreshRecord(
        id=row["refresh_id"],
        grant=_grant(row),
        is_used=row["is_used"],
        expires_at=row["refresh_expires_at"],
        agent_status=row["agent_status"],
        parent_agent_did=row["parent_agent_did"],
    )


async def mark_refresh_used(tx: Transaction, refresh_id: str) -> None:
    await tx.execute("UPDATE refresh_tokens SET is_used = TRUE WHERE id = $1", refresh_id)


async def lock_active_grant(tx: Transaction, developer_id: str, grant_id: str) -> Grant | None:
    """Lock a grant that is active and unexpired, so a cascade revocation waits for this transaction."""
    row = await tx.fetchrow(
        _SELECT
        + """
        WHERE g.id = $1 AND g.developer_id = $2 AND g.status = 'active' AND g.expires_at > now()
        FOR UPDATE OF g
        """,
        grant_id,
        developer_id,
    )
    return None if row is None else _grant(row)


async def find_replay(tx: Transaction, lookup_hash: str) -> tuple[bytes, bytes] | None:
    row = await tx.fetchrow(
        "SELECT nonce, ciphertext FROM refresh_replays WHERE lookup_hash = $1 AND expires_at > now()",
        lookup_hash,
    )
    return None if row is None else (bytes(row["nonce"]), bytes(row["ciphertext"]))


async def insert_replay(
    tx: Transaction, lookup_hash: str, developer_id: str, nonce: bytes, ciphertext: bytes, expires_at: datetime
) -> None:
    await tx.execute("DELETE FROM refresh_replays WHERE expires_at <= now()")
    await tx.execute(
        """
        INSERT INTO refresh_replays (lookup_hash, developer_id, nonce, ciphertext, expires_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (lookup_hash) DO NOTHING
        """,
        lookup_hash,
        developer_id,
        nonce,
        ciphertext,
        expires_at,
    )
