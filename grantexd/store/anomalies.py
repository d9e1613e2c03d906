"""Anomalies, and the activity counts the detection rules read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from grantexd.store.database import Database, Transaction

# Advisory lock key that lets one instance at a time run the periodic scan.
ANOMALY_SCAN_LOCK = 0x6772616E74616E6F


@dataclass(frozen=True)
class Anomaly:
    id: str
    developer_id: str
    type: str
    severity: str
    agent_id: str
    principal_id: str | None
    description: str
    metadata: dict[str, Any]
    detected_at: datetime
    acknowledged_at: datetime | None


_COLUMNS = (
    "id, developer_id, type, severity, agent_id, principal_id, description, metadata, detected_at, acknowledged_at"
)


def _anomaly(row: asyncpg.Record) -> Anomaly:
    metadata = row["metadata"]
    return Anomaly(
        id=row["id"],
        developer_id=row["developer_id"],
        type=row["type"],
        severity=row["severity"],
        agent_id=row["agent_id"],
        principal_id=row["principal_id"],
        description=row["description"],
        metadata=json.loads(metadata) if isinstance(metadata, str) else metadata,
        detected_at=row["detected_at"],
        acknowledged_at=row["acknowledged_at"],
    )


@dataclass(frozen=True)
class AgentActivity:
    """One agent's activity in the scanned window, with its history for comparison."""

    developer_id: str
    agent_id: str
    tokens_in_window: int
    tokens_in_history: int
    audit_entries: int
    audit_failures: int
    off_hours_events: int
    new_principals: int
    had_earlier_grants: bool


async def agent_activity(
    db: Database,
    developer_id: str | None,
    window_start: datetime,
    window_end: datetime,
    history_start: datetime,
    off_hours_start: int,
    off_hours_end: int,
) -> list[AgentActivity]:
    """Count, per agent with any activity in the window, what the detection rules need.

    Off hours are the UTC hours from ``off_hours_start`` up to ``off_hours_end``, wrapping
    past midnight when the start is later than the end.
    """
    rows = await db.fetch(
        """
        WITH tokens AS (
            SELECT g.developer_id, g.agent_id,
                   count(*) FILTER (WHERE t.created_at >= $2) AS in_window,
                   count(*) FILTER (WHERE t.created_at < $2) AS in_history,
                   count(*) FILTER (WHERE t.created_at >= $2 AND (
                       CASE WHEN $5::int <= $6::int
                            THEN extract(hour FROM t.created_at AT TIME ZONE 'UTC') >= $5::int
                                 AND extract(hour FROM t.created_at AT TIME ZONE 'UTC') < $6::int
                            ELSE extract(hour FROM t.created_at AT TIME ZONE 'UTC') >= $5::int
                                 OR extract(hour FROM t.created_at AT TIME ZONE 'UTC') < $6::int END)) AS off_hours
            FROM grant_tokens t JOIN grants g ON g.id = t.grant_id
            WHERE t.created_at >= $4 AND t.created_at < $3 AND ($1::text IS NULL OR g.developer_id = $1)
            GROUP BY g.developer_id, g.agent_id
        ), audit AS (
            SELECT developer_id, agent_id, count(*) AS entries,
                   count(*) FILTER (WHERE status IN ('failure', 'blocked')) AS failures
            FROM audit_entries
            WHERE timestamp >= $2 AND timestamp < $3 AND ($1::text IS NULL OR developer_id = $1)
            GROUP BY developer_id, agent_id
        ), first_grants AS (
            SELECT developer_id, agent_id, principal_id, min(issued_at) AS first_issued
            FROM grants
            WHERE ($1::text IS NULL OR developer_id = $1)
            GROUP BY developer_id, agent_id, principal_id
        ), principals AS (
            SELECT developer_id, agent_id,
                   count(*) FILTER (WHERE first_issued >= $2 AND first_issued < $3) AS new_principals,
                   bool_or(first_issued < $2) AS had_earlier
            FROM first_grants
            GROUP BY developer_id, agent_id
        )
        SELECT coalesce(t.developer_id, a.developer_id, p.developer_id) AS developer_id,
               coalesce(t.agent_id, a.agent_id, p.agent_id) AS agent_id,
               coalesce(t.in_window, 0) AS tokens_in_window,
               coalesce(t.in_history, 0) AS tokens_in_history,
               coalesce(a.entries, 0) AS audit_entries,
               coalesce(a.failures, 0) AS audit_failures,
               coalesce(t.off_hours, 0) AS off_hours_events,
               coalesce(p.new_principals, 0) AS new_principals,
               coalesce(p.had_earlier, FALSE) AS had_earlier_grants
        FROM tokens t
        FULL JOIN audit a ON a.developer_id = t.developer_id AND a.agent_id = t.agent_id
        FULL JOIN principals p
          ON p.developer_id = coalesce(t.developer_id, a.developer_id)
         AND p.agent_id = coalesce(t.agent_id, a.agent_id)
        WHERE coalesce(t.in_window, 0) > 0 OR coalesce(a.entries, 0) > 0 OR coalesce(p.new_principals, 0) > 0
        """,
        developer_id,
        window_start,
        window_end,
        history_start,
        off_hours_start,
        off_hours_end,
    )
    return [
        AgentActivity(
            developer_id=row["developer_id"],
            agent_id=row["agent_id"],
            tokens_in_window=row["tokens_in_window"],
            tokens_in_history=row["tokens_in_history"],
            audit_entries=row["audit_entries"],
            audit_failures=row["audit_failures"],
            off_hours_events=row["off_hours_events"],
            new_principals=row["new_principals"],
            had_earlier_grants=row["had_earlier_grants"],
        )
        for row in rows
    ]


@dataclass(frozen=True)
class NewAnomaly:
    id: str
    developer_id: str
    type: str
    severity: str
    agent_id: str
    description: str
    metadata: dict[str, Any]
    window_start: datetime


async def insert_anomaly(tx: Transaction, new: NewAnomaly) -> Anomaly | None:
    """Insert unless this window already has one of this type for the agent; None if it had."""
    row = await tx.fetchrow(
        f"""
        INSERT INTO anomalies (id, developer_id, type, severity, agent_id, description, metadata, window_start)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
        ON CONFLICT (developer_id, type, agent_id, window_start) DO NOTHING
        RETURNING {_COLUMNS}
        """,
        new.id,
        new.developer_id,
        new.type,
        new.severity,
        new.agent_id,
        new.description,
        json.dumps(new.metadata),
        new.window_start,
    )
    return None if row is None else _anomaly(row)


async def list_anomalies(
    db: Database, developer_id: str, unacknowledged_only: bool, limit: int | None, offset: int
) -> list[Anomaly]:
    rows = await db.fetch(
        f"""
        SELECT {_COLUMNS} FROM anomalies
        WHERE developer_id = $1 AND (NOT $2 OR acknowledged_at IS NULL)
        ORDER BY detected_at DESC, id DESC
        LIMIT $3 OFFSET $4
        """,
        developer_id,
        unacknowledged_only,
        limit,
        offset,
    )
    return [_anomaly(row) for row in rows]


async def acknowledge(db: Database, developer_id: str, anomaly_id: str) -> Anomaly | None:
    row = await db.fetchrow(
        f"""
        UPDATE anomalies SET acknowledged_at = coalesce(acknowledged_at, now())
        WHERE id = $1 AND developer_id = $2
        RETURNING {_COLUMNS}
        """,
        anomaly_id,
        developer_id,
    )
    return None if row is None else _anomaly(row)
