"""Authorization requests: pending consent, approved with a one-time code, or finished."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from grantexd.store.database import Database, Transaction


@dataclass(frozen=True)
class AuthRequest:
    id: str
    agent_id: str
    principal_id: str
    developer_id: str
    scopes: list[str]
    redirect_uri: str | None
    state: str | None
    expires_in: str
    expires_at: datetime
    status: str
    code: str | None
    audience: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    fido_verified: bool
    created_at: datetime


_COLUMNS = (
    "id, agent_id, principal_id, developer_id, scopes, redirect_uri, state, expires_in, expires_at, "
    "status, code, audience, code_challenge, code_challenge_method, fido_verified, created_at"
)

_PREFIXED_COLUMNS = ", ".join("r." + column.strip() for column in _COLUMNS.split(","))


def _auth_request(row: asyncpg.Record) -> AuthRequest:
    return AuthRequest(
        id=row["id"],
        agent_id=row["agent_id"],
        principal_id=row["principal_id"],
        developer_id=row["developer_id"],
        scopes=list(row["scopes"]),
        redirect_uri=row["redirect_uri"],
        state=row["state"],
        expires_in=row["expires_in"],
        expires_at=row["expires_at"],
        status=row["status"],
        code=row["code"],
        audience=row["audience"],
        code_challenge=row["code_challenge"],
        code_challenge_method=row["code_challenge_method"],
        fido_verified=row["fido_verified"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True)
class NewAuthRequest:
    id: str
    agent_id: str
    principal_id: str
    developer_id: str
    scopes: list[str]
    redirect_uri: str | None
    state: str | None
    expires_in: str
    expires_at: datetime
    status: str
    code: str | None
    audience: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    purpose: str | None


async def insert_auth_request(db: Database, new: NewAuthRequest) -> AuthRequest:
    row = await db.fetchrow(
        f"""
        INSERT INTO auth_requests (
            id, agent_id, principal_id, developer_id, scopes, redirect_uri, state, expires_in,
            expires_at, status, code, audience, code_challenge, code_challenge_method, purpose)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
        RETURNING {_COLUMNS}
        """,
        new.id,
        new.agent_id,
        new.principal_id,
        new.developer_id,
        new.scopes,
        new.redirect_uri,
        new.state,
        new.expires_in,
        new.expires_at,
        new.status,
        new.code,
        new.audience,
        new.code_challenge,
        new.code_challenge_method,
        new.purpose,
    )
    assert row is not None
    return _auth_request(row)


@dataclass(frozen=True)
class ConsentView:
    request: AuthRequest
    agent_name: str
    agent_did: str
    agent_description: str
    developer_name: str
    fido_required: bool


async def find_consent_view(db: Database, request_id: str) -> ConsentView | None:
    row = await db.fetchrow(
        f"""
        SELECT {_PREFIXED_COLUMNS},
               a.name AS agent_name, a.did AS agent_did, a.description AS agent_description,
               d.name AS developer_name, d.fido_required
        FROM auth_requests r
        JOIN agents a ON a.id = r.agent_id
        JOIN developers d ON d.id = r.developer_id
        WHERE r.id = $1
        """,
        request_id,
    )
    if row is None:
        return None
    return ConsentView(
        request=_auth_request(row),
        agent_name=row["agent_name"],
        agent_did=row["agent_did"],
        agent_description=row["agent_description"],
        developer_name=row["developer_name"],
        fido_required=row["fido_required"],
    )


async def approve_pending(
    db: Database, request_id: str, code: str, developer_id: str | None
) -> AuthRequest | None:
    """Approve a pending, unexpired request in one conditional UPDATE; None if it was not."""
    row = await db.fetchrow(
        f"""
        UPDATE auth_requests r SET status = 'approved', code = $2
        FROM developers d
        WHERE r.id = $1 AND d.id = r.developer_id
          AND ($3::text IS NULL OR r.developer_id = $3)
          AND r.status = 'pending' AND r.expires_at > now()
          AND (NOT d.fido_required OR r.fido_verified)
        RETURNING {_PREFIXED_COLUMNS}
        """,
        request_id,
        code,
        developer_id,
    )
    return None if row is None else _auth_request(row)


async def deny_pending(
    db: Database, request_id: str, developer_id: str | None, require_unexpired: bool
) -> AuthRequest | None:
    row = await db.fetchrow(
        f"""
        UPDATE auth_requests r SET status = 'denied'
        FROM developers d
        WHERE r.id = $1 AND d.id = r.developer_id
          AND ($2::text IS NULL OR r.developer_id = $2)
          AND r.status = 'pending'
          AND (NOT $3::boolean OR r.expires_at > now())
          AND (NOT d.fido_required OR r.fido_verified)
        RETURNING {_PREFIXED_COLUMNS}
        """,
        request_id,
        developer_id,
        require_unexpired,
    )
    return None if row is None else _auth_request(row)


async def lock_for_exchange(tx: Transaction, developer_id: str, code: str, agent_id: str) -> AuthRequest | None:
    """Find and lock the request behind a code, if its agent is active and the caller's."""
    row = await tx.fetchrow(
        f"""
        SELECT {_PREFIXED_COLUMNS}
        FROM auth_requests r
        JOIN agents a ON a.id = r.agent_id
        WHERE r.code = $1 AND r.agent_id = $2 AND r.developer_id = $3 AND a.status = 'active'
        FOR UPDATE OF r FOR SHARE OF a
        """,
        code,
        agent_id,
        developer_id,
    )
    return None if row is None else _auth_request(row)


async def mark_consumed(tx: Transaction, request_id: str) -> None:
    await tx.execute("UPDATE auth_requests SET status = 'consumed' WHERE id = $1", request_id)
