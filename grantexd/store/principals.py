"""Queries for the principal dashboard: one end user's grants and audit entries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grantexd.store.database import Database, Transaction


async def has_active_grant(db: Database, developer_id: str, principal_id: str) -> bool:
    found: bool = await db.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM grants
            WHERE developer_id = $1 AND principal_id = $2 AND status = 'active' AND expires_at > now())
        """,
        developer_id,
        principal_id,
    )
    return found


@dataclass(frozen=True)
class PrincipalGrant:
    id: str
    agent_id: str
    agent_name: str | None
    agent_description: str | None
    agent_did: str | None
    scopes: list[str]
    status: str
    issued_at: datetime
    expires_at: datetime
    delegation_depth: int


async def list_active_grants(db: Database, developer_id: str, principal_id: str) -> list[PrincipalGrant]:
    rows = await db.fetch(
        """
        SELECT g.id, g.agent_id, a.name AS agent_name, a.description AS agent_description, a.did AS agent_did,
               g.scopes, g.status, g.issued_at, g.expires_at, g.delegation_depth
        FROM grants g LEFT JOIN agents a ON a.id = g.agent_id
        WHERE g.developer_id = $1 AND g.principal_id = $2 AND g.status = 'active'
        ORDER BY g.issued_at DESC, g.id DESC
        """,
        developer_id,
        principal_id,
    )
    return [
        PrincipalGrant(
            id=row["id"],
            agent_id=row["agent_id"],
            agent_name=row["agent_name"],
            agent_description=row["agent_description"],
            agent_did=row["agent_did"],
            scopes=list(row["scopes"]),
            status=row["status"],
            issued_at=row["issued_at"],
            expires_at=row["expires_at"],
            delegation_depth=row["delegation_depth"],
        )
        for row in rows
    ]


async def recent_audit_entries(db: Database, developer_id: str, principal_id: str) -> list[dict[str, Any]]:
    """Return the 100 newest audit entries of this principal, newest first, as wire objects."""
    rows = await db.fetch(
        """
        SELECT id, agent_id, agent_did, grant_id, principal_id, action, metadata, status, timestamp
        FROM audit_entries
        WHERE developer_id = $1 AND principal_id = $2
        ORDER BY timestamp DESC, id DESC
        LIMIT 100
        """,
        developer_id,
        principal_id,
    )
    entries = []
    for row in rows:
        metadata = row["metadata"]
        entries.append(
            {
                "entryId": row["id"],
                "agentId": row["agent_id"],
                "agentDid": row["agent_did"],
                "grantId": row["grant_id"],
                "principalId": row["principal_id"],
                "action": row["action"],
                "metadata": json.loads(metadata) if isinstance(metadata, str) else metadata,
                "status": row["status"],
                "timestamp": row["timestamp"],
            }
        )
    return entries


async def is_active_grant_of(tx: Transaction, developer_id: str, principal_id: str, grant_id: str) -> bool:
    found: bool = await tx.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM grants
            WHERE id = $1 AND developer_id = $2 AND principal_id = $3 AND status = 'active')
        """,
        grant_id,
        developer_id,
        principal_id,
    )
    return found
