"""The English text of the consent and permissions pages, in one catalog.

Templates read ``TEXT`` by key, and the permissions script receives the keys it needs as a
JSON block, so every word a person reads on these pages is here. A value with ``{name}``
fields is filled with ``markupsafe.Markup(value).format(...)``, which HTML-escapes each
argument, so the catalog itself must contain no markup.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Final

TEXT: Final[dict[str, str]] = {
    "brand": "Grantex",
    "page_title_suffix": "Grantex",
    # The consent page.
    "consent_title": "Authorize {agent}",
    "consent_heading": "Allow {agent} to act for you?",
    "consent_details_heading": "Who is asking",
    "consent_agent_label": "Agent",
    "consent_agent_id_label": "Agent ID",
    "consent_developer_label": "Developer",
    "consent_scopes_heading": "It will be able to",
    "consent_expiry_heading": "For how long",
    "consent_expiry": "Access ends {duration} after you approve, around {date}.",
    "consent_decision_heading": "Your decision",
    "consent_advice": "Approve only if you trust {developer} and expected this request. Deny leaves nothing changed.",
    "approve": "Approve",
    "deny": "Deny",
    # Pages shown after a decision, and for requests that cannot be decided.
    "approved_title": "Access approved",
    "approved_body": "You approved the request. You can close this page and return to the app.",
    "denied_title": "Access denied",
    "denied_body": "You denied the request, so the app got no access. You can close this page.",
    "redirecting_body": "Your browser is being sent back to the app.",
    "continue_to_app": "Continue to the app",
    "missing_request_title": "Missing request ID",
    "missing_request_body": "This link has no request ID. Go back to the app and start again.",
    "not_found_title": "Request not found",
    "not_found_body": (
        "There is no authorization request with this ID. Check that you opened the whole link, "
        "or go back to the app and start again."
    ),
    "gone_title": "Request no longer open",
    "gone_body": (
        "This authorization request has expired or has already been approved or denied. "
        "Go back to the app and start again if you still want to give access."
    ),
    "form_rejected_title": "Form could not be verified",
    "form_rejected_body": (
        "This form did not come from the consent page, or it is out of date, so nothing was changed. "
        "Open the request again and make your decision there."
    ),
    "back_to_request": "Open the request again",
    "fido_required_title": "Security key required",
    "fido_required_body": (
        "The developer of this app requires a security key check before a decision, and this "
        "server cannot perform that check yet. Nothing was changed."
    ),
    "invalid_decision_title": "Invalid decision",
    "invalid_decision_body": "The form must be sent with either Approve or Deny. Nothing was changed.",
    "request_failed_title": "Request failed",
    "unavailable_title": "Service unavailable",
    "unavailable_body": "The service is temporarily unavailable. Try again in a moment.",
    "unexpected_title": "Something went wrong",
    "unexpected_body": "The request could not be completed. Try again in a moment.",
    # The permissions page. Its script receives every key that starts with "permissions_".
    "permissions_title": "Your permissions",
    "permissions_intro": "Agents that can act for you, what they may do, and what they did recently.",
    "permissions_noscript": "This page needs JavaScript to load your permissions.",
    "permissions_loading": "Loading your permissions…",
    "permissions_loaded": "Your permissions are up to date.",
    "permissions_no_session": (
        "This page needs the permissions link from the app you use. Open that link again."
    ),
    "permissions_session_invalid": (
        "Your permissions link is invalid or has expired. Open the permissions link from the app again."
    ),
    "permissions_load_failed": "Your permissions could not be loaded. Try again in a moment.",
    "permissions_grants_heading": "Active access",
    "permissions_grants_empty": "No agent has access at the moment.",
    "permissions_scopes_label": "Can:",
    "permissions_expires": "Access ends in {duration}, on {date}.",
    "permissions_expired": "Access ended on {date}.",
    "permissions_issued": "Given on {date}.",
    "permissions_delegated": "Passed on by another agent.",
    "permissions_revoke": "Revoke access",
    "permissions_revoke_label": "Revoke access for {agent}",
    "permissions_revoke_confirm": "Revoke access for {agent}? It stops working at once and cannot be undone.",
    "permissions_revoking": "Revoking access for {agent}…",
    "permissions_revoked": "Access for {agent} was revoked.",
    "permissions_revoke_missing": "Access for {agent} had already ended.",
    "permissions_revoke_failed": "Access for {agent} could not be revoked. Try again in a moment.",
    "permissions_audit_heading": "Recent activity",
    "permissions_audit_empty": "No activity recorded yet.",
    "permissions_audit_status": "Result: {status}",
    "permissions_unknown_agent": "Unknown agent",
}

# English month abbreviations, so dates read the same on the server and in the script.
MONTHS: Final[tuple[str, ...]] = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)

# Singular and plural names of the units that durations are written in, largest first.
DURATION_UNITS: Final[tuple[tuple[str, str, int], ...]] = (
    ("day", "days", 86400),
    ("hour", "hours", 3600),
    ("minute", "minutes", 60),
    ("second", "seconds", 1),
)


def format_date(moment: datetime) -> str:
    """Format a moment as ``2 Feb 2026, 12:34 UTC``, because the pages cannot know the reader's time zone."""
    utc = moment.astimezone(timezone.utc)
    return f"{utc.day} {MONTHS[utc.month - 1]} {utc.year}, {utc:%H:%M} UTC"


def describe_duration(duration: timedelta) -> str:
    """Write a duration in words with its largest unit and the next one, as ``1 day 6 hours``.

    The next unit is left out when it is zero, and smaller units are dropped, so the words
    round down by less than one of the second unit.
    """
    remaining = max(int(duration.total_seconds()), 0)
    counts: list[tuple[int, str, str]] = []
    for singular, plural, seconds in DURATION_UNITS:
        count, remaining = divmod(remaining, seconds)
        counts.append((count, singular, plural))

    # The largest unit with a non-zero count, or seconds when the duration is zero.
    first = next((index for index, (count, _, _) in enumerate(counts) if count), len(counts) - 1)
    shown = [counts[first]]
    if first + 1 < len(counts) and counts[first + 1][0]:
        shown.append(counts[first + 1])
    return " ".join(f"{count} {singular if count == 1 else plural}" for count, singular, plural in shown)


def script_text() -> dict[str, object]:
    """Return the strings the permissions script needs, with the date and duration words."""
    strings: dict[str, object] = {key: value for key, value in TEXT.items() if key.startswith("permissions_")}
    strings["months"] = list(MONTHS)
    strings["units"] = [[singular, plural, seconds] for singular, plural, seconds in DURATION_UNITS]
    return strings
