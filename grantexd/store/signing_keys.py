"""The signing key set kept in PostgreSQL, with sealed private keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grantexd.store.database import Database, Transaction

# Advisory lock key that serializes changes to the key set across instances and commands.
KEY_SET_LOCK = 0x6772616E746B6579


@dataclass(frozen=True)
class StoredKey:
    kid: str
    public_jwk: dict[str, Any]
    private_key_nonce: bytes
    private_key_sealed: bytes
    created_at: datetime
    activates_at: datetime
    retired_at: datetime | None
    # The latest expiry of a grant token this key signed, or None when it signed none.
    last_token_expires_at: datetime | None


async def list_keys(db: Database | Transaction) -> list[StoredKey]:
    rows = await db.fetch(
        """
        SELECT k.kid, k.public_jwk, k.private_key_nonce, k.private_key_sealed, k.created_at,
               k.activates_at, k.retired_at,
               (SELECT max(t.expires_at) FROM grant_tokens t WHERE t.kid = k.kid) AS last_token_expires_at
        FROM signing_keys k
        ORDER BY k.activates_at, k.created_at, k.kid
        """
    )
    keys = []
    for row in rows:
        jwk = row["public_jwk"]
        keys.append(
            StoredKey(
                kid=row["kid"],
                public_jwk=json.loads(jwk) if isinstance(jwk, str) else jwk,
                private_key_nonce=bytes(row["private_key_nonce"]),
                private_key_sealed=bytes(row["private_key_sealed"]),
                created_at=row["created_at"],
                activates_at=row["activates_at"],
                retired_at=row["retired_at"],
                last_token_expires_at=row["last_token_expires_at"],
            )
        )
    return keys


async def insert_key(
    tx: Transaction,
    kid: str,
    public_jwk: dict[str, Any],
    nonce: bytes,
    sealed: bytes,
    activates_at: datetime,
) -> bool:
    """Insert a key; return False when a key with this kid already exists."""
    status = await tx.execute(
        """
        INSERT INTO signing_keys (kid, public_jwk, private_key_nonce, private_key_sealed, activates_at)
        VALUES ($1, $2::jsonb, $3, $4, $5)
        ON CONFLICT (kid) DO NOTHING
        """,
        kid,
        json.dumps(public_jwk),
        nonce,
        sealed,
        activates_at,
    )
    return status.endswith(" 1")


async def retire_key(tx: Transaction, kid: str) -> bool:
    status = await tx.execute(
        "UPDATE signing_keys SET retired_at = now() WHERE kid = $1 AND retired_at IS NULL", kid
    )
    return status.endswith(" 1")
