"""RSA signing keys and the JWK Set that publishes them.

A key's ``kid`` is its RFC 7638 JWK thumbprint (SHA-256, base64url), so the same key always
has the same ``kid`` across restarts and instances.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


class InvalidKey(ValueError):
    """A configured key is not a usable RSA private key."""


def _b64url_uint(number: int) -> str:
    length = (number.bit_length() + 7) // 8
    return base64.urlsafe_b64encode(number.to_bytes(length, "big")).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    public_jwk: dict[str, str]

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"


def signing_key_from_private_key(private_key: rsa.RSAPrivateKey) -> SigningKey:
    numbers = private_key.public_key().public_numbers()
    n = _b64url_uint(numbers.n)
    e = _b64url_uint(numbers.e)
    # RFC 7638: the required members only, in lexicographic order, without whitespace.
    thumbprint_input = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"))
    kid = base64.urlsafe_b64encode(hashlib.sha256(thumbprint_input.encode()).digest()).rstrip(b"=")
    jwk = {"kty": "RSA", "n": n, "e": e, "alg": "RS256", "use": "sig", "kid": kid.decode()}
    return SigningKey(kid=kid.decode(), private_key=private_key, public_jwk=jwk)


def load_signing_key(pem: str) -> SigningKey:
    """Load a PKCS#8 or PKCS#1 PEM RSA private key of at least 2048 bits."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"not a readable unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidKey(f"must be an RSA private key, got {type(key).__name__}")
    if key.key_size < 2048:
        raise InvalidKey(f"RSA key must be at least 2048 bits, got {key.key_size}")
    return signing_key_from_private_key(key)


def generate_signing_key() -> SigningKey:
    return signing_key_from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def private_key_pem(key: SigningKey) -> str:
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass(frozen=True)
class KeySet:
    """The key that signs now, plus every key whose tokens may still be live."""

    active: SigningKey
    verifying: tuple[SigningKey, ...]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self.verifying]}

    def find(self, kid: str | None) -> SigningKey | None:
        if kid is None:
            return self.active
        for key in self.verifying:
            if key.kid == kid:
                return key
        return None


def single_key_set(key: SigningKey) -> KeySet:
    return KeySet(active=key, verifying=(key,))


class KeyRing:
    """The key set in force; replaced whole when the stored set is reloaded."""

    def __init__(self, key_set: KeySet) -> None:
        self._key_set = key_set

    @property
    def current(self) -> KeySet:
        return self._key_set

    def replace(self, key_set: KeySet) -> None:
        self._key_set = key_set


def parse_key_encryption_key(text: str) -> bytes:
    """Decode a 32-byte key given as 64 hex digits or as base64; raise ValueError otherwise."""
    value = text.strip()
    candidates: list[bytes] = []
    if len(value) == 64:
        try:
            candidates.append(bytes.fromhex(value))
        except ValueError:
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            candidates.append(decode(value + "=" * (-len(value) % 4)))
        except (binascii.Error, ValueError):
            pass
    for candidate in candidates:
        if len(candidate) == 32:
            return candidate
    raise ValueError("must be 32 random bytes written as 64 hex digits or as base64 (openssl rand -base64 32)")
