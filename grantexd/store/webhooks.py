"""Webhook endpoints and the delivery queue.

A delivery row moves from ``pending`` to ``delivered``, or to ``failed`` once its attempts are
used up. Workers claim due rows with ``FOR UPDATE SKIP LOCKED`` and hold them under a lease
(``lease_id``, ``lease_expires_at``): until the lease expires no other worker claims the row,
and the outcome is recorded only by the holder of ``lease_id``. A worker that dies mid-attempt
leaves the row pending, and it is claimed again once the lease expires.

TODO: delivered and failed rows are kept forever. A retention period would bound the table,
which grows by one row per event and endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from grantexd.store.database import Database, Transaction

DeliveryStatus = Literal["pending", "delivered", "failed"]

# The PostgreSQL NOTIFY channel that wakes delivery workers when rows are queued.
DELIVERY_CHANNEL = "grantexd_webhook_deliveries"


@dataclass(frozen=True)
class Webhook:
    id: str
    developer_id: str
    url: str
    events: list[str]
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    created_at: datetime


_WEBHOOK_COLUMNS = "id, developer_id, url, events, secret, previous_secret, previous_secret_expires_at, created_at"


def _webhook(row: asyncpg.Record) -> Webhook:
    return Webhook(
        id=row["id"],
        developer_id=row["developer_id"],
        url=row["url"],
        events=list(row["events"]),
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        created_at=row["created_at"],
    )


async def count_webhooks(tx: Transaction, developer_id: str) -> int:
    count: int = await tx.fetchval("SELECT count(*) FROM webhooks WHERE developer_id = $1", developer_id)
    return count


async def insert_webhook(
    tx: Transaction, webhook_id: str, developer_id: str, url: str, events: list[str], secret: str
) -> Webhook:
    row = await tx.fetchrow(
        f"""
        INSERT INTO webhooks (id, developer_id, url, events, secret)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {_WEBHOOK_COLUMNS}
        """,
        webhook_id,
        developer_id,
        url,
        events,
        secret,
    )
    assert row is not None
    return _webhook(row)


async def list_webhooks(db: Database, developer_id: str) -> list[Webhook]:
    rows = await db.fetch(
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE developer_id = $1 ORDER BY created_at DESC, id DESC",
        developer_id,
    )
    return [_webhook(row) for row in rows]


async def find_webhook(db: Database | Transaction, developer_id: str, webhook_id: str) -> Webhook | None:
    row = await db.fetchrow(
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND developer_id = $2", webhook_id, developer_id
    )
    return None if row is None else _webhook(row)


async def delete_webhook(db: Database, developer_id: str, webhook_id: str) -> bool:
    """Delete the endpoint and, through the foreign key, its deliveries; return whether it existed."""
    row = await db.fetchrow(
        "DELETE FROM webhooks WHERE id = $1 AND developer_id = $2 RETURNING id", webhook_id, developer_id
    )
    return row is not None


async def rotate_secret(
    db: Database, developer_id: str, webhook_id: str, new_secret: str, grace_seconds: float
) -> Webhook | None:
    """Make ``new_secret`` current and keep the replaced one valid for ``grace_seconds``."""
    row = await db.fetchrow(
        f"""
        UPDATE webhooks
        SET previous_secret = secret,
            previous_secret_expires_at = now() + make_interval(secs => $4),
            secret = $3
        WHERE id = $1 AND developer_id = $2
        RETURNING {_WEBHOOK_COLUMNS}
        """,
        webhook_id,
        developer_id,
        new_secret,
        grace_seconds,
    )
    return None if row is None else _webhook(row)


async def find_subscribed_webhook_ids(tx: Transaction, developer_id: str, event_type: str) -> list[str]:
    rows = await tx.fetch(
        "SELECT id FROM webhooks WHERE developer_id = $1 AND $2 = ANY(events) ORDER BY id",
        developer_id,
        event_type,
    )
    return [row["id"] for row in rows]


@dataclass(frozen=True)
class NewEvent:
    """One event to queue for a set of endpoints; ``body`` is the exact JSON bytes to send."""

    id: str
    type: str
    developer_id: str
    body: bytes


async def insert_deliveries(
    tx: Transaction, event: NewEvent, delivery_ids: list[str], webhook_ids: list[str]
) -> None:
    """Queue one delivery per endpoint and notify the workers when ``tx`` commits."""
    await tx.execute(
        """
        INSERT INTO webhook_deliveries (id, webhook_id, developer_id, event_id, event_type, body)
        SELECT delivery_id, webhook_id, $3, $4, $5, $6
        FROM unnest($1::text[], $2::text[]) AS queued (delivery_id, webhook_id)
        """,
        delivery_ids,
        webhook_ids,
        event.developer_id,
        event.id,
        event.type,
        event.body,
    )
    # PostgreSQL delivers a NOTIFY only on commit, and folds repeats within one transaction.
    await tx.execute("SELECT pg_notify($1, '')", DELIVERY_CHANNEL)


@dataclass(frozen=True)
class Delivery:
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    # True while a worker has the row leased for an attempt.
    leased: bool


_DELIVERY_COLUMNS = """
    id, webhook_id, event_id, event_type, status, attempts, max_attempts, next_attempt_at,
    last_attempt_at, last_status_code, last_error, delivered_at, created_at,
    COALESCE(lease_expires_at > now(), FALSE) AS leased
"""


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(
        id=row["id"],
        webhook_id=row["webhook_id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        status=row["status"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        created_at=row["created_at"],
        leased=row["leased"],
    )


async def list_deliveries(
    db: Database, webhook_id: str, status: DeliveryStatus | None, limit: int | None, offset: int
) -> list[Delivery]:
    """List an endpoint's deliveries, newest first; the caller has checked the endpoint's owner."""
    rows = await db.fetch(
        f"""
        SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries
        WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2)
        ORDER BY created_at DESC, id DESC
        LIMIT $3 OFFSET $4
        """,
        webhook_id,
        status,
        limit,
        offset,
    )
    return [_delivery(row) for row in rows]


async def find_delivery(db: Database | Transaction, webhook_id: str, delivery_id: str) -> Delivery | None:
    row = await db.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2",
        delivery_id,
        webhook_id,
    )
    return None if row is None else _delivery(row)


async def lock_delivery(tx: Transaction, webhook_id: str, delivery_id: str) -> Delivery | None:
    row = await tx.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2 FOR UPDATE",
        delivery_id,
        webhook_id,
    )
    return None if row is None else _delivery(row)


async def schedule_now(tx: Transaction, delivery_id: str, max_attempts: int) -> Delivery:
    """Make a pending or failed delivery due at once, allowing ``max_attempts`` in total."""
    row = await tx.fetchrow(
        f"""
        UPDATE webhook_deliveries
        SET status = 'pending', next_attempt_at = now(), max_attempts = $2
        WHERE id = $1
        RETURNING {_DELIVERY_COLUMNS}
        """,
        delivery_id,
        max_attempts,
    )
    assert row is not None
    await tx.execute("SELECT pg_notify($1, '')", DELIVERY_CHANNEL)
    return _delivery(row)


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to one worker for one attempt, with what the attempt needs to send it."""

    id: str
    webhook_id: str
    url: str
    body: bytes
    # The number of this attempt, counting from 1.
    attempt: int
    max_attempts: int
    secret: str
    # The replaced secret while its grace period lasts, otherwise None.
    previous_secret: str | None


async def claim_due_deliveries(
    db: Database,
    *,
    limit: int,
    per_webhook_limit: int,
    in_flight: dict[str, int],
    lease_id: str,
    lease_seconds: float,
) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries, oldest due first, and count the attempt on each.

    ``in_flight`` maps endpoint ids to the attempts this worker is already running for them;
    with those, no endpoint gets more than ``per_webhook_limit`` attempts at once, so the
    claim never fills up with rows for one slow receiver. Rows another worker is locking or
    leasing are skipped. The final UPDATE checks status and lease again on the row's latest
    version, because a row can be leased and committed by another worker after this
    statement's snapshot was taken.
    """
    rows = await db.fetch(
        """
        WITH busy AS (
            SELECT * FROM unnest($3::text[], $4::int[]) AS busy (webhook_id, running)
        ), candidates AS (
            SELECT d.id,
                   row_number() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id)
                       + COALESCE(busy.running, 0) AS slot
            FROM webhook_deliveries d LEFT JOIN busy ON busy.webhook_id = d.webhook_id
            WHERE d.status = 'pending' AND d.next_attempt_at <= now()
              AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
        ), chosen AS (
            SELECT d.id FROM webhook_deliveries d JOIN candidates c ON c.id = d.id
            WHERE c.slot <= $2
            ORDER BY d.next_attempt_at, d.id
            LIMIT $1
            FOR UPDATE OF d SKIP LOCKED
        )
        UPDATE webhook_deliveries d
        SET lease_id = $5,
            lease_expires_at = now() + make_interval(secs => $6),
            attempts = d.attempts + 1,
            last_attempt_at = now()
        FROM chosen, webhooks w
        WHERE d.id = chosen.id AND w.id = d.webhook_id
          AND d.status = 'pending' AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
        RETURNING d.id, d.webhook_id, w.url, d.body, d.attempts, d.max_attempts, w.secret,
                  CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret
        """,
        limit,
        per_webhook_limit,
        list(in_flight.keys()),
        list(in_flight.values()),
        lease_id,
        lease_seconds,
    )
    return [
        ClaimedDelivery(
            id=row["id"],
            webhook_id=row["webhook_id"],
            url=row["url"],
            body=bytes(row["body"]),
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            secret=row["secret"],
            previous_secret=row["previous_secret"],
        )
        for row in rows
    ]


async def record_delivered(db: Database, delivery_id: str, lease_id: str, status_code: int) -> bool:
    """Mark a leased delivery delivered; return False if the lease was lost or the row deleted."""
    row = await db.fetchrow(
        """
        UPDATE webhook_deliveries
        SET status = 'delivered', delivered_at = now(), last_status_code = $3, last_error = NULL,
            lease_id = NULL, lease_expires_at = NULL
        WHERE id = $1 AND lease_id = $2
        RETURNING id
        """,
        delivery_id,
        lease_id,
        status_code,
    )
    return row is not None


async def record_failed_attempt(
    db: Database,
    delivery_id: str,
    lease_id: str,
    status_code: int | None,
    error: str,
    retry_delay_seconds: float,
) -> DeliveryStatus | None:
    """Record a failed attempt and schedule the retry, or mark the row failed when none is left.

    Returns the row's new status, or None if the lease was lost or the row deleted.
    """
    status: DeliveryStatus | None = await db.fetchval(
        """
        UPDATE webhook_deliveries
        SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
            next_attempt_at = now() + make_interval(secs => $5),
            last_status_code = $3, last_error = $4, lease_id = NULL, lease_expires_at = NULL
        WHERE id = $1 AND lease_id = $2
        RETURNING status
        """,
        delivery_id,
        lease_id,
        status_code,
        error,
        retry_delay_seconds,
    )
    return status


async def release_lease(db: Database, delivery_id: str, lease_id: str, error: str) -> None:
    """Leave an interrupted attempt's row pending and due at once, so any worker retries it."""
    await db.execute(
        """
        UPDATE webhook_deliveries
        SET next_attempt_at = now(), last_error = $3, lease_id = NULL, lease_expires_at = NULL
        WHERE id = $1 AND lease_id = $2
        """,
        delivery_id,
        lease_id,
        error,
    )


async def seconds_until_next_due(db: Database, excluded_webhook_ids: list[str]) -> float | None:
    """Return how long until a pending row outside the excluded endpoints becomes claimable.

    The value is zero or negative when one is claimable now, and None when nothing is pending.
    """
    seconds = await db.fetchval(
        """
        SELECT EXTRACT(EPOCH FROM min(GREATEST(next_attempt_at, COALESCE(lease_expires_at, next_attempt_at)))
                                 - now())
        FROM webhook_deliveries
        WHERE status = 'pending' AND NOT (webhook_id = ANY($1::text[]))
        """,
        excluded_webhook_ids,
    )
    return None if seconds is None else float(seconds)
