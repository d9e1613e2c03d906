"""Bearer secrets (API keys, refresh tokens) and the hashes stored in their place."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as stdlib_secrets


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_api_key(mode: str) -> str:
    """Return ``gx_live_`` or ``gx_test_`` followed by 32 random bytes in base64url (51 chars)."""
    prefix = "gx_test_" if mode == "sandbox" else "gx_live_"
    return prefix + base64.urlsafe_b64encode(stdlib_secrets.token_bytes(32)).rstrip(b"=").decode()


def new_refresh_token() -> str:
    """Return ``ref_`` followed by 256 random bits in base64url; only its hash is stored."""
    return "ref_" + base64.urlsafe_b64encode(stdlib_secrets.token_bytes(32)).rstrip(b"=").decode()


def fingerprint(secret: str) -> str:
    """Return a short, non-reversible tag of a secret for correlating log lines."""
    return sha256_hex(secret)[:12]


def pkce_s256_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def constant_time_equal(left: str, right: str) -> bool:
    return hmac.compare_digest(left.encode("utf-8"), right.encode("utf-8"))
