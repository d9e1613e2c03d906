"""The audit log against the real daemon: appending, reading, the hash chain and ``grantexd audit verify``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from grantex import Grantex, GrantexApiError, ListAuditParams

from grantexd.crypto.ids import new_ulid
from grantexd.dev import free_port
from grantexd.services.audit import compute_entry_hash, place_after
from grantexd.store.audit import AuditEntry, ChainHead
from tests.support import (
    REPOSITORY,
    Backends,
    Daemon,
    bearer,
    create_database,
    daemon_environment,
    drop_database,
    new_daemon,
    query,
    signup,
    stop_quietly,
)

HEX_SHA256 = re.compile(r"^[a-f0-9]{64}$")
ISO_MILLISECONDS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(scope="module")
def daemon(backends: Backends) -> Iterator[Daemon]:
    """A daemon for this module with the per-IP limits off.

    The tests here send more than the 30 audit appends and 30 signups per minute that one
    client IP may send, and the concurrency test needs all 30 of its appends to be accepted.
    """
    url = create_database(backends)
    process = new_daemon(backends, url, RATE_LIMIT_IP_PER_MINUTE="0")
    process.start()
    yield process
    stop_quietly(process)
    drop_database(backends, url)


def entry_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agentId": "ag_01J00000000000000000000000",
        "agentDid": "did:grantex:ag_01J00000000000000000000000",
        "grantId": "grnt_01J00000000000000000000000",
        "principalId": "user_123",
        "action": "payment.initiated",
    }
    body.update(changes)
    return body


def entry_from_json(body: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=body["entryId"],
        agent_id=body["agentId"],
        agent_did=body["agentDid"],
        grant_id=body["grantId"],
        principal_id=body["principalId"],
        developer_id=body["developerId"],
        action=body["action"],
        metadata=body["metadata"],
        hash=body["hash"],
        prev_hash=body["prevHash"],
        timestamp=datetime.fromisoformat(body["timestamp"]),
        status=body["status"],
    )


def log_entry(client: httpx.Client, api_key: str, **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/audit/log", json=entry_body(**changes), headers=bearer(api_key))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def list_entries(client: httpx.Client, api_key: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/audit/entries", params=params, headers=bearer(api_key))
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


@dataclass(frozen=True)
class VerifyRun:
    status: int
    lines: list[dict[str, Any]]
    output: str


def run_verify(environ: dict[str, str], *arguments: str) -> VerifyRun:
    """Run ``grantexd audit verify`` and return its exit status, JSON log lines and all output."""
    completed = subprocess.run(
        [sys.executable, "-m", "grantexd", "audit", "verify", *arguments],
        env=environ,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return VerifyRun(completed.returncode, lines, completed.stdout + completed.stderr)


def lines_with(run: VerifyRun, message: str) -> list[dict[str, Any]]:
    return [line for line in run.lines if line.get("msg") == message]


# ---------------------------------------------------------------------------------------------
# Appending


def test_log_returns_first_entry(client: httpx.Client) -> None:
    developer = signup(client)
    response = client.post("/v1/audit/log", json=entry_body(), headers=bearer(developer["apiKey"]))
    assert response.status_code == 201
    body = response.json()
    assert body["entryId"].startswith("alog_")
    assert body["developerId"] == developer["developerId"]
    assert body["agentDid"] == "did:grantex:ag_01J00000000000000000000000"
    assert body["principalId"] == "user_123"
    assert body["metadata"] == {}
    assert body["status"] == "success"
    assert body["prevHash"] is None
    assert HEX_SHA256.match(body["hash"])
    assert ISO_MILLISECONDS.match(body["timestamp"])


def test_log_hash_recomputes(client: httpx.Client) -> None:
    developer = signup(client)
    body = log_entry(
        client, developer["apiKey"], metadata={"merchant": "Air India", "amount": 420, "nested": {"z": 1, "a": [True, None, 1.5]}}
    )
    assert compute_entry_hash(entry_from_json(body)) == body["hash"]


def test_log_links_to_previous_entry(client: httpx.Client) -> None:
    developer = signup(client)
    first = log_entry(client, developer["apiKey"])
    second = log_entry(client, developer["apiKey"], action="email.sent", status="failure")
    assert second["prevHash"] == first["hash"]
    assert second["status"] == "failure"
    assert compute_entry_hash(entry_from_json(second)) == second["hash"]


def test_chains_are_per_developer(client: httpx.Client) -> None:
    first_developer = signup(client)
    second_developer = signup(client)
    log_entry(client, first_developer["apiKey"])
    other = log_entry(client, second_developer["apiKey"])
    assert other["prevHash"] is None


REQUIRED = "agentId, agentDid, grantId, principalId, and action are required"

VALIDATION_CASES = [
    ({key: value for key, value in entry_body().items() if key != "agentId"}, REQUIRED),
    (entry_body(agentDid=""), REQUIRED),
    (entry_body(grantId=None), REQUIRED),
    (entry_body(principalId=0), REQUIRED),
    (entry_body(action=False), REQUIRED),
    ([entry_body()], REQUIRED),
    (entry_body(action=["payment.initiated"]), "action must be a string"),
    (entry_body(agentId=7), "agentId must be a string"),
    (entry_body(status="pending"), "status must be success, failure, or blocked"),
    (entry_body(status=""), "status must be success, failure, or blocked"),
    (entry_body(metadata=[1, 2]), "metadata must be an object"),
    (entry_body(metadata=None), "metadata must be an object"),
    (entry_body(metadata="text"), "metadata must be an object"),
    (
        entry_body(metadata={"big": 10**400}),
        "metadata must not contain numbers outside the range of a 64-bit double (about 1.8e308)",
    ),
]


@pytest.mark.parametrize(("body", "message"), VALIDATION_CASES)
def test_log_validation_message(client: httpx.Client, body: Any, message: str) -> None:
    developer = signup(client)
    response = client.post("/v1/audit/log", json=body, headers=bearer(developer["apiKey"]))
    assert response.status_code == 400
    assert response.json()["code"] == "BAD_REQUEST"
    assert response.json()["message"] == message


@pytest.mark.parametrize(
    "raw_body",
    [
        '{"agentId":"a","agentDid":"d","grantId":"g","principalId":"p","action":"x\\u0000y"}',
        '{"agentId":"a","agentDid":"d","grantId":"g","principalId":"p","action":"x","metadata":{"k":"\\ud800"}}',
        '{"agentId":"a","agentDid":"d","grantId":"g","principalId":"p","action":"x","metadata":{"n":1e400}}',
    ],
    ids=["nul-in-action", "unpaired-surrogate-in-metadata", "infinite-number"],
)
def test_log_rejects_unstorable_value(client: httpx.Client, raw_body: str) -> None:
    developer = signup(client)
    headers = {**bearer(developer["apiKey"]), "Content-Type": "application/json"}
    response = client.post("/v1/audit/log", content=raw_body, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "BAD_REQUEST"


def test_log_accepts_blocked_status_and_unknown_ids(client: httpx.Client) -> None:
    developer = signup(client)
    body = log_entry(client, developer["apiKey"], agentId="ag_unknown", grantId="grnt_unknown", status="blocked")
    assert body["status"] == "blocked"
    assert body["agentId"] == "ag_unknown"


def test_log_without_key_is_unauthorized(client: httpx.Client) -> None:
    response = client.post("/v1/audit/log", json=entry_body())
    assert response.status_code == 401


def test_log_metadata_numbers_round_trip(client: httpx.Client) -> None:
    developer = signup(client)
    metadata = {"one": 1.0, "big": 1e21, "small": 1.5e-7, "exact": 1e16, "negativeZero": -0.0, "huge": 2**60, "10": "a", "9": "b"}
    body = log_entry(client, developer["apiKey"], metadata=metadata)
    fetched = client.get(f"/v1/audit/{body['entryId']}", headers=bearer(developer["apiKey"])).json()
    assert compute_entry_hash(entry_from_json(body)) == body["hash"]
    assert compute_entry_hash(entry_from_json(fetched)) == body["hash"]


def test_log_over_plan_quota(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client)
    # Fill the free plan's 20,000 entries directly; the quota counts rows, not valid links.
    query(
        daemon.environ["DATABASE_URL"],
        """
        INSERT INTO audit_entries (id, agent_id, agent_did, grant_id, principal_id, developer_id, action, hash,
                                   timestamp)
        SELECT 'alog_quota_' || $1 || '_' || n, 'ag', 'did', 'grnt', 'p', $1, 'filler', md5(n::text),
               now() - interval '1 hour'
        FROM generate_series(1, 20000) AS n
        """,
        developer["developerId"],
    )
    response = client.post("/v1/audit/log", json=entry_body(), headers=bearer(developer["apiKey"]))
    assert response.status_code == 402
    assert response.json()["code"] == "PLAN_LIMIT_EXCEEDED"
    assert response.json()["message"] == (
        "Plan limit reached: free plan allows 20000 audit entries. Upgrade at /v1/billing/checkout"
    )


def test_concurrent_appends_form_one_chain(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client)

    def append(index: int) -> int:
        with httpx.Client(base_url=daemon.base_url, timeout=60) as own_client:
            response = own_client.post(
                "/v1/audit/log", json=entry_body(action=f"concurrent.{index}"), headers=bearer(developer["apiKey"])
            )
        return response.status_code

    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(append, range(30)))
    assert statuses == [201] * 30

    chain = list_entries(client, developer["apiKey"])
    assert len(chain) == 30
    assert sorted(entry["action"] for entry in chain) == sorted(f"concurrent.{index}" for index in range(30))
    assert chain[0]["prevHash"] is None
    for previous, entry in zip(chain, chain[1:]):
        assert entry["prevHash"] == previous["hash"], f"{entry['entryId']} does not link to {previous['entryId']}"
    for entry in chain:
        assert compute_entry_hash(entry_from_json(entry)) == entry["hash"], entry["entryId"]

    run = run_verify(daemon.environ, "--developer", developer["developerId"])
    assert run.status == 0, run.output
    assert lines_with(run, "audit.chain.intact")[0]["entries"] == 30


# ---------------------------------------------------------------------------------------------
# Placing an entry after the chain head


NOW = datetime(2026, 2, 1, 12, 34, 56, 789123, tzinfo=timezone.utc)
NOW_MILLISECONDS = datetime(2026, 2, 1, 12, 34, 56, 789000, tzinfo=timezone.utc)
# The first 10 ULID characters encode NOW_MILLISECONDS; the last 16 are the random part.
NOW_ULID_TIME = new_ulid(int(NOW_MILLISECONDS.timestamp() * 1000))[:10]


def test_place_first_entry_truncates_to_milliseconds() -> None:
    timestamp, entry_id = place_after(None, NOW)
    assert timestamp == NOW_MILLISECONDS
    assert entry_id.startswith("alog_" + NOW_ULID_TIME)


def test_place_after_head_in_same_millisecond() -> None:
    # A fresh id of the same millisecond cannot sort above this random part.
    head = ChainHead(id="alog_" + NOW_ULID_TIME + "Z" * 15 + "Y", hash="h", timestamp=NOW_MILLISECONDS)
    timestamp, entry_id = place_after(head, NOW)
    assert timestamp == NOW_MILLISECONDS
    assert entry_id == "alog_" + NOW_ULID_TIME + "Z" * 16


def test_place_after_full_random_part_moves_one_millisecond() -> None:
    later = NOW_MILLISECONDS + timedelta(seconds=5)
    later_ulid_time = new_ulid(int(later.timestamp() * 1000))[:10]
    head = ChainHead(id="alog_" + later_ulid_time + "Z" * 16, hash="h", timestamp=later)
    timestamp, entry_id = place_after(head, NOW)
    assert timestamp == later + timedelta(milliseconds=1)
    assert entry_id > head.id


def test_place_after_head_ahead_of_clock() -> None:
    later = NOW_MILLISECONDS + timedelta(seconds=5)
    head = ChainHead(id="alog_" + "0" * 26, hash="h", timestamp=later)
    timestamp, entry_id = place_after(head, NOW)
    assert timestamp == later
    assert entry_id > head.id


def test_place_after_invalid_ulid_moves_one_millisecond() -> None:
    head = ChainHead(id="alog_" + "Z" * 26, hash="h", timestamp=NOW_MILLISECONDS)
    timestamp, _ = place_after(head, NOW)
    assert timestamp == NOW_MILLISECONDS + timedelta(milliseconds=1)


def test_place_after_legacy_id_moves_one_millisecond() -> None:
    head = ChainHead(id="alog_legacy~", hash="h", timestamp=NOW_MILLISECONDS)
    timestamp, _ = place_after(head, NOW)
    assert timestamp == NOW_MILLISECONDS + timedelta(milliseconds=1)


# ---------------------------------------------------------------------------------------------
# Reading


def test_get_entry(client: httpx.Client) -> None:
    developer = signup(client)
    created = log_entry(client, developer["apiKey"], metadata={"k": "v"})
    response = client.get(f"/v1/audit/{created['entryId']}", headers=bearer(developer["apiKey"]))
    assert response.status_code == 200
    assert response.json() == created


def test_get_unknown_entry(client: httpx.Client) -> None:
    developer = signup(client)
    response = client.get("/v1/audit/alog_missing", headers=bearer(developer["apiKey"]))
    assert response.status_code == 404
    assert response.json()["message"] == "Audit entry not found"
    assert response.json()["code"] == "NOT_FOUND"


def test_get_other_developers_entry(client: httpx.Client) -> None:
    owner = signup(client)
    stranger = signup(client)
    created = log_entry(client, owner["apiKey"])
    response = client.get(f"/v1/audit/{created['entryId']}", headers=bearer(stranger["apiKey"]))
    assert response.status_code == 404


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_entry_cannot_change(client: httpx.Client, method: str) -> None:
    developer = signup(client)
    created = log_entry(client, developer["apiKey"])
    response = client.request(
        method, f"/v1/audit/{created['entryId']}", json={"action": "changed"}, headers=bearer(developer["apiKey"])
    )
    assert response.status_code in (404, 405)
    fetched = client.get(f"/v1/audit/{created['entryId']}", headers=bearer(developer["apiKey"])).json()
    assert fetched["action"] == "payment.initiated"


def test_list_is_chain_order(client: httpx.Client) -> None:
    developer = signup(client)
    created = [log_entry(client, developer["apiKey"], action=f"step.{index}") for index in range(4)]
    listed = list_entries(client, developer["apiKey"])
    assert [entry["entryId"] for entry in listed] == [entry["entryId"] for entry in created]


def test_list_filters(client: httpx.Client) -> None:
    developer = signup(client)
    key = developer["apiKey"]
    plain = log_entry(client, key)
    other_agent = log_entry(client, key, agentId="ag_other")
    other_grant = log_entry(client, key, grantId="grnt_other")
    other_principal = log_entry(client, key, principalId="user_other")
    other_action = log_entry(client, key, action="email.sent")

    def ids(**params: str) -> list[str]:
        return [entry["entryId"] for entry in list_entries(client, key, **params)]

    assert ids(agentId="ag_other") == [other_agent["entryId"]]
    assert ids(grantId="grnt_other") == [other_grant["entryId"]]
    assert ids(principalId="user_other") == [other_principal["entryId"]]
    assert ids(action="email.sent") == [other_action["entryId"]]
    assert ids(action="payment.initiated", principalId="user_123", agentId="ag_01J00000000000000000000000") == [
        plain["entryId"],
        other_grant["entryId"],
    ]
    assert ids(action="never.logged") == []


def test_list_pages(client: httpx.Client) -> None:
    developer = signup(client)
    created = [log_entry(client, developer["apiKey"], action=f"step.{index}")["entryId"] for index in range(5)]
    first_page = [entry["entryId"] for entry in list_entries(client, developer["apiKey"], page=1, pageSize=2)]
    third_page = [entry["entryId"] for entry in list_entries(client, developer["apiKey"], page=3, pageSize=2)]
    assert first_page == created[:2]
    assert third_page == created[4:]


def test_list_time_range(client: httpx.Client) -> None:
    developer = signup(client)
    created = [log_entry(client, developer["apiKey"], action=f"step.{index}") for index in range(3)]
    middle = created[1]["timestamp"]
    since = list_entries(client, developer["apiKey"], since=middle)
    until = list_entries(client, developer["apiKey"], until=middle)
    assert since[0]["timestamp"] >= middle
    assert created[2]["entryId"] in [entry["entryId"] for entry in since]
    assert created[0]["entryId"] not in [entry["entryId"] for entry in since]
    assert until[-1]["timestamp"] <= middle
    assert created[0]["entryId"] in [entry["entryId"] for entry in until]
    assert created[2]["entryId"] not in [entry["entryId"] for entry in until]


def test_list_time_range_excludes_all(client: httpx.Client) -> None:
    developer = signup(client)
    log_entry(client, developer["apiKey"])
    assert list_entries(client, developer["apiKey"], since="2100-01-01") == []
    assert list_entries(client, developer["apiKey"], until="2000-01-01T00:00:00+02:00") == []


@pytest.mark.parametrize("name", ["since", "until"])
def test_list_rejects_bad_time(client: httpx.Client, name: str) -> None:
    developer = signup(client)
    response = client.get("/v1/audit/entries", params={name: "yesterday"}, headers=bearer(developer["apiKey"]))
    assert response.status_code == 400
    assert response.json()["message"] == (
        f"{name} must be an ISO-8601 timestamp such as 2026-02-01T12:34:56.789Z, got 'yesterday'"
    )


def test_list_is_per_developer(client: httpx.Client) -> None:
    owner = signup(client)
    stranger = signup(client)
    log_entry(client, owner["apiKey"])
    assert list_entries(client, stranger["apiKey"]) == []


# ---------------------------------------------------------------------------------------------
# The SDK


def test_sdk_log_list_get(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client)
    sdk = Grantex(api_key=developer["apiKey"], base_url=daemon.base_url)

    first = sdk.audit.log(
        agent_id="ag_1", agent_did="did:grantex:ag_1", grant_id="grnt_1", principal_id="alice",
        action="payment.initiated", metadata={"amount": 42.5},
    )
    second = sdk.audit.log(
        agent_id="ag_1", agent_did="did:grantex:ag_1", grant_id="grnt_1", principal_id="alice",
        action="email.sent", status="failure",
    )
    assert first.prev_hash is None
    assert second.prev_hash == first.hash
    assert second.status == "failure"

    listed = sdk.audit.list(ListAuditParams(action="payment.initiated", page=1, page_size=10))
    assert [entry.entry_id for entry in listed.entries] == [first.entry_id]

    fetched = sdk.audit.get(first.entry_id)
    assert fetched.metadata == {"amount": 42.5}
    assert fetched.hash == first.hash

    with pytest.raises(GrantexApiError, match="Audit entry not found"):
        sdk.audit.get("alog_missing")


# ---------------------------------------------------------------------------------------------
# grantexd audit verify


def test_verify_intact_chain(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client)
    for index in range(3):
        log_entry(client, developer["apiKey"], action=f"step.{index}", metadata={"index": index, "ratio": index / 3})
    run = run_verify(daemon.environ, "--developer", developer["developerId"])
    assert run.status == 0, run.output
    intact = lines_with(run, "audit.chain.intact")
    assert intact[0]["developerId"] == developer["developerId"]
    assert intact[0]["entries"] == 3
    assert lines_with(run, "audit.chain.broken") == []


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE audit_entries SET metadata = '{\"amount\": 9999}' WHERE id = $1",
        "UPDATE audit_entries SET action = 'payment.refunded' WHERE id = $1",
        "UPDATE audit_entries SET status = 'blocked' WHERE id = $1",
    ],
    ids=["metadata", "action", "status"],
)
def test_verify_finds_changed_entry(daemon: Daemon, client: httpx.Client, tamper: str) -> None:
    developer = signup(client)
    created = [log_entry(client, developer["apiKey"], metadata={"amount": 420}) for _ in range(3)]
    query(daemon.environ["DATABASE_URL"], tamper, created[1]["entryId"])

    run = run_verify(daemon.environ, "--developer", developer["developerId"])
    assert run.status == 1, run.output
    broken = lines_with(run, "audit.chain.broken")
    assert broken[0]["entryId"] == created[1]["entryId"]
    assert broken[0]["kind"] == "content"
    assert broken[0]["position"] == 2


def test_verify_finds_rehashed_entry(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client)
    created = [log_entry(client, developer["apiKey"]) for _ in range(3)]
    # A forger who rewrites an entry and its hash still breaks the next entry's link.
    changed = entry_from_json({**created[1], "action": "payment.refunded"})
    query(
        daemon.environ["DATABASE_URL"],
        "UPDATE audit_entries SET action = $2, hash = $3 WHERE id = $1",
        changed.id,
        changed.action,
        compute_entry_hash(changed),
    )
    run = run_verify(daemon.environ, "--developer", developer["developerId"])
    assert run.status == 1, run.output
    broken = lines_with(run, "audit.chain.broken")
    assert broken[0]["entryId"] == created[2]["entryId"]
    assert broken[0]["kind"] == "link"


def test_verify_finds_deleted_entry(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client)
    created = [log_entry(client, developer["apiKey"]) for _ in range(3)]
    query(daemon.environ["DATABASE_URL"], "DELETE FROM audit_entries WHERE id = $1", created[0]["entryId"])
    run = run_verify(daemon.environ, "--developer", developer["developerId"])
    assert run.status == 1, run.output
    broken = lines_with(run, "audit.chain.broken")
    assert broken[0]["entryId"] == created[1]["entryId"]
    assert broken[0]["kind"] == "link"
    assert broken[0]["position"] == 1


def stored_entry(developer_id: str, index: int, prev_hash: str | None, action: str) -> AuditEntry:
    entry = AuditEntry(
        id=f"alog_{developer_id}_{index}",
        agent_id="ag_1",
        agent_did="did:grantex:ag_1",
        grant_id="grnt_1",
        principal_id="alice",
        developer_id=developer_id,
        action=action,
        metadata={"index": index},
        hash="",
        prev_hash=prev_hash,
        timestamp=datetime(2026, 2, 1, 12, 0, index, tzinfo=timezone.utc),
        status="success",
    )
    return AuditEntry(**{**entry.__dict__, "hash": compute_entry_hash(entry)})


def insert_stored_entry(database_url: str, entry: AuditEntry) -> None:
    query(
        database_url,
        """
        INSERT INTO audit_entries (id, agent_id, agent_did, grant_id, principal_id, developer_id, action,
                                   metadata, hash, previous_hash, timestamp, status)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12)
        """,
        entry.id,
        entry.agent_id,
        entry.agent_did,
        entry.grant_id,
        entry.principal_id,
        entry.developer_id,
        entry.action,
        json.dumps(entry.metadata),
        entry.hash,
        entry.prev_hash,
        entry.timestamp,
        entry.status,
    )


def test_verify_checks_every_chain(backends: Backends, database_url: str) -> None:
    environ = daemon_environment(database_url, backends.redis_url, port=3001)
    migrated = subprocess.run(
        [sys.executable, "-m", "grantexd", "migrate"], env=environ, cwd=REPOSITORY, capture_output=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stdout
    previous: str | None = None
    for index in range(3):
        entry = stored_entry("dev_intact", index, previous, "step")
        insert_stored_entry(database_url, entry)
        previous = entry.hash
    previous = None
    for index in range(3):
        entry = stored_entry("dev_broken", index, previous, "step")
        if index == 2:
            entry = AuditEntry(**{**entry.__dict__, "action": "forged"})
        insert_stored_entry(database_url, entry)
        previous = entry.hash

    run = run_verify(environ)
    assert run.status == 1, run.output
    intact = lines_with(run, "audit.chain.intact")
    broken = lines_with(run, "audit.chain.broken")
    assert [line["developerId"] for line in intact] == ["dev_intact"]
    assert [line["developerId"] for line in broken] == ["dev_broken"]
    assert broken[0]["entryId"] == stored_entry("dev_broken", 2, None, "forged").id
    assert lines_with(run, "audit.verify.done")[0]["chains"] == 2


def test_verify_without_audit_table(backends: Backends, database_url: str) -> None:
    environ = daemon_environment(database_url, backends.redis_url, port=3001)
    run = run_verify(environ)
    assert run.status == 2, run.output
    assert "run grantexd migrate" in lines_with(run, "audit.verify.failed")[0]["error"]


def test_verify_with_unreachable_database(backends: Backends) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/grantex"
    run = run_verify(daemon_environment(url, backends.redis_url, port=3001, DB_CONNECT_TIMEOUT="5"))
    assert run.status == 2, run.output
    assert lines_with(run, "audit.verify.failed") != []
