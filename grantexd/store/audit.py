"""Audit entries: the per-developer hash chain, stored in chain order (timestamp, id).

``metadata`` is a JSONB column. asyncpg exchanges JSONB as JSON text, so it is encoded with
``json.dumps`` on the way in and decoded with ``json.loads`` on the way out, which keeps the
key order PostgreSQL returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from grantexd.store.database import Database, Transaction

AuditStatus = Literal["success", "failure", "blocked"]


@dataclass(frozen=True)
class AuditEntry:
    id: str
    agent_id: str
    agent_did: str
    grant_id: str
    principal_id: str
    developer_id: str
    action: str
    metadata: dict[str, Any]
    hash: str
    prev_hash: str | None
    timestamp: datetime
    status: AuditStatus


_COLUMNS = (
    "id, agent_id, agent_did, grant_id, principal_id, developer_id, action, metadata, hash, "
    "previous_hash, timestamp, status"
)


def _entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        agent_id=row["agent_id"],
        agent_did=row["agent_did"],
        grant_id=row["grant_id"],
        principal_id=row["principal_id"],
        developer_id=row["developer_id"],
        action=row["action"],
        metadata=json.loads(row["metadata"]),
        hash=row["hash"],
        prev_hash=row["previous_hash"],
        timestamp=row["timestamp"],
        status=row["status"],
    )


async def count_entries(tx: Transaction, developer_id: str) -> int:
    # NOTE: the plan quota runs this on every append while holding the chain lock. It scans
    # one index entry per stored entry, so appends slow down for developers with very large
    # logs (the pro plan allows 1,000,000); a per-developer counter would remove the scan.
    count: int = await tx.fetchval("SELECT count(*) FROM audit_entries WHERE developer_id = $1", developer_id)
    return count


@dataclass(frozen=True)
class ChainHead:
    """The last entry of a developer's chain: the one a new entry links to."""

    id: str
    hash: str
    timestamp: datetime


async def find_chain_head(tx: Transaction, developer_id: str) -> ChainHead | None:
    row = await tx.fetchrow(
        """
        SELECT id, hash, timestamp FROM audit_entries WHERE developer_id = $1
        ORDER BY timestamp DESC, id DESC
        LIMIT 1
        """,
        developer_id,
    )
    return None if row is None else ChainHead(id=row["id"], hash=row["hash"], timestamp=row["timestamp"])


async def insert_entry(tx: Transaction, entry: AuditEntry) -> AuditEntry:
    """Insert the entry and return it as stored, with metadata read back from JSONB."""
    row = await tx.fetchrow(
        f"""
        INSERT INTO audit_entries (id, agent_id, agent_did, grant_id, principal_id, developer_id, action,
                                   metadata, hash, previous_hash, timestamp, status)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12)
        RETURNING {_COLUMNS}
        """,
        entry.id,
        entry.agent_id,
        entry.agent_did,
        entry.grant_id,
        entry.principal_id,
        entry.developer_id,
        entry.action,
        json.dumps(entry.metadata, ensure_ascii=False, allow_nan=False),
        entry.hash,
        entry.prev_hash,
        entry.timestamp,
        entry.status,
    )
    assert row is not None
    return _entry(row)


@dataclass(frozen=True)
class AuditFilter:
    """Exact-match filters and an inclusive time range; None leaves a condition out."""

    agent_id: str | None = None
    grant_id: str | None = None
    principal_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_entries(
    db: Database, developer_id: str, filters: AuditFilter, limit: int | None, offset: int
) -> list[AuditEntry]:
    rows = await db.fetch(
        f"""
        SELECT {_COLUMNS} FROM audit_entries
        WHERE developer_id = $1
          AND ($2::text IS NULL OR agent_id = $2)
          AND ($3::text IS NULL OR grant_id = $3)
          AND ($4::text IS NULL OR principal_id = $4)
          AND ($5::text IS NULL OR action = $5)
          AND ($6::timestamptz IS NULL OR timestamp >= $6)
          AND ($7::timestamptz IS NULL OR timestamp <= $7)
        ORDER BY timestamp ASC, id ASC
        LIMIT $8 OFFSET $9
        """,
        developer_id,
        filters.agent_id,
        filters.grant_id,
        filters.principal_id,
        filters.action,
        filters.since,
        filters.until,
        limit,
        offset,
    )
    return [_entry(row) for row in rows]


async def find_entry(db: Database, developer_id: str, entry_id: str) -> AuditEntry | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM audit_entries WHERE id = $1 AND developer_id = $2", entry_id, developer_id
    )
    return None if row is None else _entry(row)


async def list_chain_developer_ids(db: Database) -> list[str]:
    """Return the id of every developer that has at least one audit entry."""
    rows = await db.fetch("SELECT DISTINCT developer_id FROM audit_entries ORDER BY developer_id")
    return [row["developer_id"] for row in rows]


async def read_chain_batch(
    db: Database, developer_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[AuditEntry]:
    """Return up to ``limit`` entries of the chain that follow position ``after`` (or the start)."""
    rows = await db.fetch(
        f"""
        SELECT {_COLUMNS} FROM audit_entries
        WHERE developer_id = $1
          AND ($2::timestamptz IS NULL OR (timestamp, id) > ($2, $3::text))
        ORDER BY timestamp ASC, id ASC
        LIMIT $4
        """,
        developer_id,
        None if after is None else after[0],
        None if after is None else after[1],
        limit,
    )
    return [_entry(row) for row in rows]


async def audit_table_exists(db: Database) -> bool:
    exists: bool = await db.fetchval("SELECT to_regclass('audit_entries') IS NOT NULL")
    return exists
