"""Human-readable descriptions of scopes, shown on the consent page and its JSON endpoint."""

from __future__ import annotations

import re

_DESCRIPTIONS = {
    "calendar:read": "Read your calendar events",
    "calendar:write": "Create, modify, and delete your calendar events",
    "email:read": "Read your email messages",
    "email:send": "Send emails on your behalf",
    "email:delete": "Delete your email messages",
    "files:read": "Read your files and documents",
    "files:write": "Create and modify your files",
    "payments:read": "View your payment history and balances",
    "payments:initiate": "Initiate payments of any amount",
    "profile:read": "Read your profile and identity information",
    "contacts:read": "Read your address book and contacts",
}

_PAYMENT_LIMIT = re.compile(r"payments:initiate:max_([0-9]+)")


def describe_scope(scope: str) -> str:
    """Return the description of a known scope, or the scope itself when none is known."""
    match = _PAYMENT_LIMIT.fullmatch(scope)
    if match is not None:
        return f"Initiate payments up to {match.group(1)} in your account's base currency"
    return _DESCRIPTIONS.get(scope, scope)
