"""Webhook signatures: how grantexd signs a delivery, and how a receiver checks one.

This module uses only the standard library, so a receiver can import it or copy it.

Every delivery is a POST whose body is the JSON event. Its signature headers are computed when
the attempt is sent, with the endpoint's secret as the HMAC-SHA256 key:

- ``X-Grantex-Timestamp``: Unix time in seconds when the attempt was sent.
- ``X-Grantex-Signature``: ``sha256=`` and the hex HMAC of the body.
- ``X-Grantex-Signature-V2``: ``sha256=`` and the hex HMAC of ``<timestamp>.<body>``.

After ``POST /v1/webhooks/{id}/rotate-secret`` the new secret signs those headers, and for a
grace period the previous secret also signs the same two values, sent as
``X-Grantex-Signature-Previous`` and ``X-Grantex-Signature-V2-Previous``. A receiver that
still has the previous secret keeps verifying deliveries until it switches to the new one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Grantex-Timestamp"
SIGNATURE_HEADER = "X-Grantex-Signature"
SIGNATURE_V2_HEADER = "X-Grantex-Signature-V2"
PREVIOUS_SIGNATURE_HEADER = "X-Grantex-Signature-Previous"
PREVIOUS_SIGNATURE_V2_HEADER = "X-Grantex-Signature-V2-Previous"

DEFAULT_TOLERANCE_SECONDS = 300

_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def sign_body(secret: str, body: bytes) -> str:
    """Return the ``X-Grantex-Signature`` value: HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def sign_timestamped_body(secret: str, timestamp: str, body: bytes) -> str:
    """Return the ``X-Grantex-Signature-V2`` value: HMAC-SHA256 of ``<timestamp>.<body>``."""
    signed = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def verify_delivery(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Check a delivery's V2 signature and that its timestamp is within the tolerance.

    ``body`` must be the raw request body: JSON that was parsed and serialized again does not
    hash to the same value. ``headers`` may use any letter case. The signature under
    ``secret`` is accepted from either the V2 header or the V2-Previous header, so the check
    passes with the new secret and, during a rotation's grace period, with the old one.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    if not _TIMESTAMP.fullmatch(timestamp):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        return False
    expected = sign_timestamped_body(secret, timestamp, body)
    for name in (SIGNATURE_V2_HEADER, PREVIOUS_SIGNATURE_V2_HEADER):
        received = lowered.get(name.lower())
        if received is not None and hmac.compare_digest(received.encode("utf-8"), expected.encode("utf-8")):
            return True
    return False
