"""Developer accounts, found by the SHA-256 of their API key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from grantexd.store.database import Database, Transaction

Mode = Literal["live", "sandbox"]


@dataclass(frozen=True)
class Developer:
    id: str
    name: str
    email: str | None
    mode: Mode
    plan: str
    fido_required: bool
    fido_rp_name: str | None
    created_at: datetime


_COLUMNS = "id, name, email, mode, plan, fido_required, fido_rp_name, created_at"


def _developer(row: asyncpg.Record) -> Developer:
    return Developer(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        mode=row["mode"],
        plan=row["plan"],
        fido_required=row["fido_required"],
        fido_rp_name=row["fido_rp_name"],
        created_at=row["created_at"],
    )


async def insert_developer(
    db: Database | Transaction, developer_id: str, api_key_hash: str, name: str, email: str | None, mode: Mode
) -> Developer:
    row = await db.fetchrow(
        f"""
        INSERT INTO developers (id, api_key_hash, name, email, mode)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {_COLUMNS}
        """,
        developer_id,
        api_key_hash,
        name,
        email,
        mode,
    )
    assert row is not None
    return _developer(row)


async def ensure_seed_developer(db: Database, developer_id: str, api_key_hash: str, name: str, mode: Mode) -> bool:
    """Insert a developer for a seeded key unless that key already exists; return True if inserted."""
    status = await db.execute(
        """
        INSERT INTO developers (id, api_key_hash, name, mode)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (api_key_hash) DO NOTHING
        """,
        developer_id,
        api_key_hash,
        name,
        mode,
    )
    return status.endswith(" 1")


async def find_developer_by_key_hash(db: Database, api_key_hash: str) -> Developer | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM developers WHERE api_key_hash = $1", api_key_hash)
    return None if row is None else _developer(row)


async def find_developer(db: Database | Transaction, developer_id: str) -> Developer | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM developers WHERE id = $1", developer_id)
    return None if row is None else _developer(row)


async def update_developer_settings(
    db: Database, developer_id: str, fido_required: bool | None, fido_rp_name: str | None
) -> bool:
    status = await db.execute(
        """
        UPDATE developers
        SET fido_required = COALESCE($2, fido_required),
            fido_rp_name = COALESCE($3, fido_rp_name)
        WHERE id = $1
        """,
        developer_id,
        fido_required,
        fido_rp_name,
    )
    return status.endswith(" 1")


async def replace_api_key_hash(db: Database, developer_id: str, current_hash: str, new_hash: str) -> bool:
    """Replace the key hash only if it is still ``current_hash``, so of two concurrent
    rotations with the same key, exactly one succeeds."""
    status = await db.execute(
        "UPDATE developers SET api_key_hash = $3 WHERE id = $1 AND api_key_hash = $2",
        developer_id,
        current_hash,
        new_hash,
    )
    return status.endswith(" 1")
