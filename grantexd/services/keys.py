"""The signing key set: which key signs, which keys are published, and rotation.

With ``KEY_ENCRYPTION_KEY`` set, the keys live in PostgreSQL, each private key sealed with
AES-256-GCM under that key-encryption key (the kid is the associated data, so a sealed key
cannot be swapped onto another row). Every instance reloads the set periodically, so a
rotation made by one instance or by ``grantexd keys rotate`` reaches all of them.

The life of a key:
- published from its creation, so verifiers can fetch it before it signs anything;
- signing from ``activates_at`` until a newer key activates (the newest activated key signs);
- still published after that while a grant token it signed is unexpired, and for 24 hours
  after it stops signing, the longest a principal session token lives;
- withdrawn at once by ``grantexd keys retire`` (for a compromised key).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grantexd.crypto.keys import KeySet, SigningKey, generate_signing_key, load_signing_key, private_key_pem
from grantexd.logging import get_logger
from grantexd.store import signing_keys as key_store
from grantexd.store.database import Database
from grantexd.store.signing_keys import KEY_SET_LOCK, StoredKey

log = get_logger()

# A principal session token lives at most this long and is not recorded per key.
SESSION_TOKEN_MAX_LIFETIME = timedelta(hours=24)


class KeyStoreError(Exception):
    """The key set cannot be used: a wrong key-encryption key, or no usable key."""


def _seal(kek: bytes, key: SigningKey) -> tuple[bytes, bytes]:
    nonce = os.urandom(12)
    sealed = AESGCM(kek).encrypt(nonce, private_key_pem(key).encode(), key.kid.encode())
    return nonce, sealed


def _unseal(kek: bytes, stored: StoredKey) -> SigningKey:
    try:
        pem = AESGCM(kek).decrypt(stored.private_key_nonce, stored.private_key_sealed, stored.kid.encode())
    except InvalidTag:
        raise KeyStoreError(
            f"signing key {stored.kid} cannot be decrypted: KEY_ENCRYPTION_KEY is not the key it was sealed with"
        ) from None
    key = load_signing_key(pem.decode())
    if key.kid != stored.kid:
        raise KeyStoreError(f"signing key {stored.kid} decrypts to a different key ({key.kid})")
    return key


@dataclass(frozen=True)
class KeyState:
    stored: StoredKey
    state: str  # "pending", "active", "superseded", "expired" or "retired"
    published: bool


def classify_keys(keys: list[StoredKey], now: datetime) -> list[KeyState]:
    """Decide for each key whether it signs, is still published, or is done."""
    live = [key for key in keys if key.retired_at is None]
    activated = [key for key in live if key.activates_at <= now]
    # The newest activated key signs; with none activated yet, the oldest live key does.
    if activated:
        active: StoredKey | None = activated[-1]
    elif live:
        active = live[0]
    else:
        active = None
    states = []
    for key in keys:
        if key.retired_at is not None:
            states.append(KeyState(key, "retired", False))
            continue
        if key is active:
            states.append(KeyState(key, "active", True))
            continue
        if key.activates_at > now:
            states.append(KeyState(key, "pending", True))
            continue
        later = [other.activates_at for other in activated if other.activates_at > key.activates_at]
        superseded_at = min(later) if later else now
        still_needed = (
            key.last_token_expires_at is not None and key.last_token_expires_at > now
        ) or superseded_at + SESSION_TOKEN_MAX_LIFETIME > now
        states.append(KeyState(key, "superseded" if still_needed else "expired", still_needed))
    return states


def build_key_set(kek: bytes, keys: list[StoredKey], now: datetime) -> KeySet:
    states = classify_keys(keys, now)
    active = [state for state in states if state.state == "active"]
    if not active:
        raise KeyStoreError("the key set has no usable signing key; run `grantexd keys generate`")
    signing = _unseal(kek, active[0].stored)
    verifying = [signing if state.state == "active" else _unseal(kek, state.stored) for state in states if state.published]
    return KeySet(active=signing, verifying=tuple(verifying))


async def load_key_set(db: Database, kek: bytes, now: datetime) -> KeySet:
    return build_key_set(kek, await key_store.list_keys(db), now)


async def ensure_key_set(db: Database, kek: bytes, imported: SigningKey | None, now: datetime) -> KeySet:
    """Make sure the stored set has an active key, importing or generating one if it has none.

    ``imported`` (from RSA_PRIVATE_KEY) is added to the set when it is not there yet, so moving
    from a single configured key to the stored set keeps every issued token verifiable.
    """
    async with db.transaction() as tx:
        await tx.advisory_lock("signing-keys", KEY_SET_LOCK)
        keys = await key_store.list_keys(tx)
        if imported is not None and all(key.kid != imported.kid for key in keys):
            nonce, sealed = _seal(kek, imported)
            await key_store.insert_key(tx, imported.kid, imported.public_jwk, nonce, sealed, now)
            log.info("keys.imported", kid=imported.kid)
            keys = await key_store.list_keys(tx)
        if not any(state.state == "active" for state in classify_keys(keys, now)):
            key = generate_signing_key()
            nonce, sealed = _seal(kek, key)
            await key_store.insert_key(tx, key.kid, key.public_jwk, nonce, sealed, now)
            log.info("keys.generated", kid=key.kid, activatesAt=now.isoformat())
            keys = await key_store.list_keys(tx)
    return build_key_set(kek, keys, now)


async def add_key(db: Database, kek: bytes, activates_at: datetime) -> SigningKey:
    """Generate a key that is published now and signs from ``activates_at``."""
    key = generate_signing_key()
    nonce, sealed = _seal(kek, key)
    async with db.transaction() as tx:
        await tx.advisory_lock("signing-keys", KEY_SET_LOCK)
        await key_store.insert_key(tx, key.kid, key.public_jwk, nonce, sealed, activates_at)
    log.info("keys.generated", kid=key.kid, activatesAt=activates_at.isoformat())
    return key


async def retire(db: Database, kid: str, now: datetime, force: bool) -> None:
    """Withdraw a key from the JWKS; refuse the active key unless ``force`` is set."""
    async with db.transaction() as tx:
        await tx.advisory_lock("signing-keys", KEY_SET_LOCK)
        states = {state.stored.kid: state for state in classify_keys(await key_store.list_keys(tx), now)}
        state = states.get(kid)
        if state is None:
            raise KeyStoreError(f"no signing key with kid {kid!r}; `grantexd keys list` shows them")
        if state.state == "retired":
            raise KeyStoreError(f"signing key {kid} is already retired")
        if state.state == "active" and not force:
            raise KeyStoreError(
                f"signing key {kid} is the active key; rotate first, or pass --force to retire it anyway "
                "(the next key, or a newly generated one, then signs, and every token it signed stops verifying)"
            )
        await key_store.retire_key(tx, kid)
    log.warning("keys.retired", kid=kid, state=state.state)
