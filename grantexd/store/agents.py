"""Agents registered by a developer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from grantexd.store.database import Database, Transaction


@dataclass(frozen=True)
class Agent:
    id: str
    did: str
    developer_id: str
    name: str
    description: str
    scopes: list[str]
    redirect_uris: list[str]
    status: str
    created_at: datetime
    updated_at: datetime


_COLUMNS = "id, did, developer_id, name, description, scopes, redirect_uris, status, created_at, updated_at"


def _agent(row: asyncpg.Record) -> Agent:
    return Agent(
        id=row["id"],
        did=row["did"],
        developer_id=row["developer_id"],
        name=row["name"],
        description=row["description"],
        scopes=list(row["scopes"]),
        redirect_uris=list(row["redirect_uris"]),
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def count_agents(tx: Transaction, developer_id: str) -> int:
    count: int = await tx.fetchval("SELECT count(*) FROM agents WHERE developer_id = $1", developer_id)
    return count


async def insert_agent(
    tx: Transaction,
    agent_id: str,
    developer_id: str,
    name: str,
    description: str,
    scopes: list[str],
    redirect_uris: list[str],
) -> Agent:
    row = await tx.fetchrow(
        f"""
        INSERT INTO agents (id, did, developer_id, name, description, scopes, redirect_uris)
        VALUES ($1, 'did:grantex:' || $1, $2, $3, $4, $5, $6)
        RETURNING {_COLUMNS}
        """,
        agent_id,
        developer_id,
        name,
        description,
        scopes,
        redirect_uris,
    )
    assert row is not None
    return _agent(row)


async def list_agents(db: Database, developer_id: str, limit: int | None, offset: int) -> list[Agent]:
    rows = await db.fetch(
        f"""
        SELECT {_COLUMNS} FROM agents WHERE developer_id = $1
        ORDER BY created_at DESC, id DESC
        LIMIT $2 OFFSET $3
        """,
        developer_id,
        limit,
        offset,
    )
    return [_agent(row) for row in rows]


async def find_agent(db: Database | Transaction, developer_id: str, agent_id: str) -> Agent | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM agents WHERE id = $1 AND developer_id = $2", agent_id, developer_id
    )
    return None if row is None else _agent(row)


async def update_agent(
    db: Database,
    developer_id: str,
    agent_id: str,
    name: str | None,
    description: str | None,
    scopes: list[str] | None,
    redirect_uris: list[str] | None,
    status: str | None,
) -> Agent | None:
    row = await db.fetchrow(
        f"""
        UPDATE agents
        SET name = COALESCE($3, name),
            description = COALESCE($4, description),
            scopes = COALESCE($5, scopes),
            redirect_uris = COALESCE($6, redirect_uris),
            status = COALESCE($7, status),
            updated_at = now()
        WHERE id = $1 AND developer_id = $2
        RETURNING {_COLUMNS}
        """,
        agent_id,
        developer_id,
        name,
        description,
        scopes,
        redirect_uris,
        status,
    )
    return None if row is None else _agent(row)


async def delete_agent(tx: Transaction, developer_id: str, agent_id: str) -> bool:
    """Delete the agent; its auth requests, grants and tokens go with it (ON DELETE CASCADE).

    The agent row is locked first. Transactions that issue tokens for an agent hold a share
    lock on its row before they touch grants or tokens, so the two always lock in the same
    order: the delete waits for them, or they wait and then find no agent, and neither deadlocks.
    """
    locked = await tx.fetchval(
        "SELECT id FROM agents WHERE id = $1 AND developer_id = $2 FOR UPDATE", agent_id, developer_id
    )
    if locked is None:
        return False
    status = await tx.execute("DELETE FROM agents WHERE id = $1 AND developer_id = $2", agent_id, developer_id)
    return status.endswith(" 1")


async def lock_active_agent(tx: Transaction, developer_id: str, agent_id: str) -> bool:
    """Share-lock an active agent of this developer for the transaction; False if there is none."""
    found = await tx.fetchval(
        "SELECT id FROM agents WHERE id = $1 AND developer_id = $2 AND status = 'active' FOR SHARE",
        agent_id,
        developer_id,
    )
    return found is not None
