"""The audit log: appending to each developer's hash chain, reading it, and verifying it.

Every developer has one chain, in (timestamp, id) order. Each entry stores the hash of the
previous entry (``prevHash``, null for the first) and its own hash, the lowercase hex SHA-256
of a JSON text with the fixed key order ``id, agentId, agentDid, grantId, principalId,
developerId, action, metadata, timestamp, prevHash, status``. ``metadata`` is written as
canonical JSON and ``timestamp`` as the ISO string with milliseconds that the API returns.
Changing an entry breaks its own hash ("content"), and removing or reordering entries breaks
the next entry's ``prevHash`` ("link").
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from grantexd.crypto.canonical import canonical_json, js_json, js_string
from grantexd.crypto.ids import new_ulid
from grantexd.errors import BadRequest, NotFound, PlanLimitExceeded
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.services.plans import plan_limits, plan_name
from grantexd.services.timefmt import to_iso, truncate_to_milliseconds
from grantexd.store import audit as audit_store
from grantexd.store.audit import AuditEntry, AuditFilter, AuditStatus, ChainHead
from grantexd.store.database import Database
from grantexd.store.developers import Developer

log = get_logger()

_AUDIT_CHAIN_LOCK = 0
_ENTRY_ID_PREFIX = "alog_"
_STATUSES: tuple[AuditStatus, ...] = ("success", "failure", "blocked")
_REQUIRED_FIELDS = ("agentId", "agentDid", "grantId", "principalId", "action")
_REQUIRED_MESSAGE = "agentId, agentDid, grantId, principalId, and action are required"


# ---------------------------------------------------------------------------------------------
# The hash


def _hash_text(entry: AuditEntry, metadata_text: str, previous_key: str, with_status: bool) -> str:
    previous = "null" if entry.prev_hash is None else js_string(entry.prev_hash)
    text = (
        f'{{"id":{js_string(entry.id)}'
        f',"agentId":{js_string(entry.agent_id)}'
        f',"agentDid":{js_string(entry.agent_did)}'
        f',"grantId":{js_string(entry.grant_id)}'
        f',"principalId":{js_string(entry.principal_id)}'
        f',"developerId":{js_string(entry.developer_id)}'
        f',"action":{js_string(entry.action)}'
        f',"metadata":{metadata_text}'
        f',"timestamp":{js_string(to_iso(entry.timestamp))}'
        f',"{previous_key}":{previous}'
    )
    if with_status:
        text += f',"status":{js_string(entry.status)}'
    return text + "}"


def entry_hash_text(entry: AuditEntry) -> str:
    """Return the exact text whose SHA-256 is the entry's hash. ``entry.hash`` is not read."""
    return _hash_text(entry, canonical_json(entry.metadata), "prevHash", with_status=True)


def compute_entry_hash(entry: AuditEntry) -> str:
    return hashlib.sha256(entry_hash_text(entry).encode("utf-8")).hexdigest()


ChainLayout = Literal["current", "legacy-exact-metadata", "legacy-previous-hash"]


def match_entry_layout(entry: AuditEntry) -> ChainLayout | None:
    """Return the hash layout that reproduces ``entry.hash``, or None when none does.

    Besides the current layout, entries written by older versions of the reference server
    may use the metadata text as first stringified instead of canonical JSON, or the key
    ``previousHash`` with no ``status`` at all.

    NOTE: the original metadata text of those legacy entries is lost, because JSONB keeps
    its own key order. The legacy layouts are tried with the metadata in the order
    PostgreSQL returns it (and canonically for ``previousHash``), so a legacy entry whose
    objects had several keys in another order is reported as a content break. No test
    vector for a legacy layout exists, so their exact text is unconfirmed.
    """
    if compute_entry_hash(entry) == entry.hash:
        return "current"
    as_stored = js_json(entry.metadata)
    candidates: list[tuple[ChainLayout, str]] = [
        ("legacy-exact-metadata", _hash_text(entry, as_stored, "prevHash", with_status=True)),
        ("legacy-previous-hash", _hash_text(entry, as_stored, "previousHash", with_status=False)),
        (
            "legacy-previous-hash",
            _hash_text(entry, canonical_json(entry.metadata), "previousHash", with_status=False),
        ),
    ]
    for layout, text in candidates:
        if hashlib.sha256(text.encode("utf-8")).hexdigest() == entry.hash:
            return layout
    return None


# ---------------------------------------------------------------------------------------------
# Appending


@dataclass(frozen=True)
class LogRequest:
    agent_id: str
    agent_did: str
    grant_id: str
    principal_id: str
    action: str
    metadata: dict[str, Any]
    status: AuditStatus


def _is_js_falsy(value: object) -> bool:
    # Falsy in JavaScript: null, false, "" and 0. An empty array or object is truthy there.
    return value is None or value is False or value == "" or (type(value) in (int, float) and value == 0)


def _has_unstorable_character(text: str) -> bool:
    # PostgreSQL text and JSONB reject U+0000, and UTF-8 cannot encode an unpaired surrogate.
    return "\x00" in text or any("\ud800" <= character <= "\udfff" for character in text)


_NUMBER_RANGE_PROBLEM = "metadata must not contain numbers outside the range of a 64-bit double (about 1.8e308)"


def _metadata_problem(value: Any) -> str | None:
    """Return why ``value`` cannot be stored and hashed as metadata, or None if it can."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _has_unstorable_character(item):
                return "metadata must not contain NUL characters or unpaired UTF-16 surrogates"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            try:
                float(item)
            except OverflowError:
                return _NUMBER_RANGE_PROBLEM
        elif isinstance(item, float):
            if not math.isfinite(item):
                return _NUMBER_RANGE_PROBLEM
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            return "metadata must contain only JSON values"
    return None


def parse_log_request(body: object) -> LogRequest:
    """Validate a ``POST /v1/audit/log`` body, raising BadRequest with the protocol's message."""
    if not isinstance(body, dict):
        raise BadRequest(_REQUIRED_MESSAGE)
    texts: dict[str, str] = {}
    for field in _REQUIRED_FIELDS:
        value = body.get(field)
        if _is_js_falsy(value):
            raise BadRequest(_REQUIRED_MESSAGE)
        if not isinstance(value, str):
            raise BadRequest(f"{field} must be a string")
        if _has_unstorable_character(value):
            raise BadRequest(f"{field} must not contain NUL characters or unpaired UTF-16 surrogates")
        texts[field] = value

    status: AuditStatus = "success"
    status_value = body.get("status")
    if status_value is not None:
        if status_value not in _STATUSES:
            raise BadRequest("status must be success, failure, or blocked")
        status = status_value

    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BadRequest("metadata must be an object")
    problem = _metadata_problem(metadata)
    if problem is not None:
        raise BadRequest(problem)

    return LogRequest(
        agent_id=texts["agentId"],
        agent_did=texts["agentDid"],
        grant_id=texts["grantId"],
        principal_id=texts["principalId"],
        action=texts["action"],
        metadata=metadata,
        status=status,
    )


# The Crockford base32 alphabet of ULIDs in value order, as grantexd.crypto.ids uses it.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_LENGTH = 26
_ULID_RANDOM_MASK = (1 << 80) - 1


def _epoch_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def _entry_id_successor(entry_id: str) -> str | None:
    """Return the entry id with the ULID's random part plus one.

    Returns None when ``entry_id`` is not ``alog_`` and a ULID, or when its random part is
    already at its maximum, since carrying into the time part would change the millisecond.
    """
    ulid = entry_id.removeprefix(_ENTRY_ID_PREFIX)
    if ulid == entry_id or len(ulid) != _ULID_LENGTH or any(c not in _CROCKFORD for c in ulid):
        return None
    value = 0
    for character in ulid:
        value = value * 32 + _CROCKFORD.index(character)
    if value >= 1 << 128 or value & _ULID_RANDOM_MASK == _ULID_RANDOM_MASK:
        return None
    value += 1
    characters = []
    for _ in range(_ULID_LENGTH):
        characters.append(_CROCKFORD[value & 31])
        value >>= 5
    return _ENTRY_ID_PREFIX + "".join(reversed(characters))


def place_after(head: ChainHead | None, now: datetime) -> tuple[datetime, str]:
    """Return the timestamp and id for a new entry so that it sorts after the chain head.

    The timestamp is ``now`` truncated to milliseconds, so the stored value and the hashed
    ISO string agree. It never goes below the head's timestamp, which may be later than this
    clock when several instances' clocks differ. ULIDs of one millisecond are in random
    order, so when a fresh id would sort before the head's, the id is the head's id plus one,
    as a monotonic ULID generator does.
    """
    timestamp = truncate_to_milliseconds(now.astimezone(timezone.utc))
    if head is not None and timestamp < head.timestamp:
        timestamp = head.timestamp
    entry_id = _ENTRY_ID_PREFIX + new_ulid(_epoch_ms(timestamp))
    if head is None or timestamp > head.timestamp or entry_id > head.id:
        return timestamp, entry_id
    successor = _entry_id_successor(head.id)
    if successor is not None:
        return timestamp, successor
    later = timestamp + timedelta(milliseconds=1)
    return later, _ENTRY_ID_PREFIX + new_ulid(_epoch_ms(later))


async def log_entry(services: Services, developer: Developer, body: object) -> AuditEntry:
    """Validate the body, append it to the developer's chain and return the stored entry."""
    request = parse_log_request(body)
    limits = plan_limits(developer.plan)
    async with services.db.transaction() as tx:
        # The lock serializes appends per developer, so that two entries never link to the
        # same head. It also makes the quota count exact.
        await tx.advisory_lock(developer.id, _AUDIT_CHAIN_LOCK)
        if limits.audit_entries is not None:
            if await audit_store.count_entries(tx, developer.id) >= limits.audit_entries:
                raise PlanLimitExceeded(
                    f"Plan limit reached: {plan_name(developer.plan)} plan allows {limits.audit_entries} "
                    "audit entries. Upgrade at /v1/billing/checkout"
                )
        head = await audit_store.find_chain_head(tx, developer.id)
        timestamp, entry_id = place_after(head, services.now())
        unhashed = AuditEntry(
            id=entry_id,
            agent_id=request.agent_id,
            agent_did=request.agent_did,
            grant_id=request.grant_id,
            principal_id=request.principal_id,
            developer_id=developer.id,
            action=request.action,
            metadata=request.metadata,
            hash="",
            prev_hash=None if head is None else head.hash,
            timestamp=timestamp,
            status=request.status,
        )
        entry = replace(unhashed, hash=compute_entry_hash(unhashed))
        stored = await audit_store.insert_entry(tx, entry)
        # Verification recomputes the hash from the JSONB value. An entry whose metadata reads
        # back differently would fail verification forever, so the transaction is rolled back.
        if compute_entry_hash(stored) != entry.hash:
            raise RuntimeError(f"audit entry {entry.id} metadata does not read back from JSONB unchanged")
    log.info("audit.entry.appended", developerId=developer.id, entryId=stored.id, action=stored.action)
    return stored


# ---------------------------------------------------------------------------------------------
# Reading


async def list_entries(
    services: Services, developer: Developer, filters: AuditFilter, limit: int | None, offset: int
) -> list[AuditEntry]:
    return await audit_store.list_entries(services.db, developer.id, filters, limit, offset)


async def get_entry(services: Services, developer: Developer, entry_id: str) -> AuditEntry:
    entry = await audit_store.find_entry(services.db, developer.id, entry_id)
    if entry is None:
        raise NotFound("Audit entry not found")
    return entry


# ---------------------------------------------------------------------------------------------
# Verifying

ChainBreakKind = Literal["link", "content"]


@dataclass(frozen=True)
class ChainBreak:
    entry_id: str
    kind: ChainBreakKind
    # 1-based position of the entry in chain order.
    position: int


@dataclass(frozen=True)
class ChainReport:
    developer_id: str
    # Entries read, up to and including the first broken one.
    entries_checked: int
    # Intact entries whose hash matched a legacy layout instead of the current one.
    legacy_entries: int
    first_break: ChainBreak | None


async def verify_chain(db: Database, developer_id: str, batch_size: int = 1000) -> ChainReport:
    """Walk one developer's chain in (timestamp, id) order and stop at the first break.

    An entry has a ``link`` break when its prevHash differs from the previous entry's stored
    hash (or is not null on the first entry), and a ``content`` break when its stored hash
    differs from the recomputed one. A link break is reported first when both apply.
    NOTE: entries removed from the end of a chain leave no trace that this walk can see.
    """
    checked = 0
    legacy = 0
    previous_hash: str | None = None
    after: tuple[datetime, str] | None = None
    while True:
        batch = await audit_store.read_chain_batch(db, developer_id, after, batch_size)
        for entry in batch:
            checked += 1
            if entry.prev_hash != previous_hash:
                return ChainReport(developer_id, checked, legacy, ChainBreak(entry.id, "link", checked))
            layout = match_entry_layout(entry)
            if layout is None:
                return ChainReport(developer_id, checked, legacy, ChainBreak(entry.id, "content", checked))
            if layout != "current":
                legacy += 1
            previous_hash = entry.hash
        if len(batch) < batch_size:
            return ChainReport(developer_id, checked, legacy, None)
        after = (batch[-1].timestamp, batch[-1].id)


async def verify_chains(db: Database, developer_id: str | None) -> list[ChainReport]:
    """Verify one developer's chain, or every chain when ``developer_id`` is None.

    Logs one line per chain as it is verified (``audit.chain.intact`` or
    ``audit.chain.broken``), then a summary line, and returns the reports.
    """
    developer_ids = [developer_id] if developer_id else await audit_store.list_chain_developer_ids(db)
    reports = []
    for chain_developer_id in developer_ids:
        report = await verify_chain(db, chain_developer_id)
        reports.append(report)
        if report.first_break is None:
            log.info(
                "audit.chain.intact",
                developerId=report.developer_id,
                entries=report.entries_checked,
                legacyEntries=report.legacy_entries,
            )
        else:
            log.error(
                "audit.chain.broken",
                developerId=report.developer_id,
                entryId=report.first_break.entry_id,
                kind=report.first_break.kind,
                position=report.first_break.position,
            )
    broken = sum(1 for report in reports if report.first_break is not None)
    log.info("audit.verify.done", chains=len(reports), broken=broken)
    return reports


async def audit_log_exists(db: Database) -> bool:
    """Return whether the audit table has been created (by ``grantexd migrate`` or startup)."""
    return await audit_store.audit_table_exists(db)
