"""JavaScript-compatible JSON text and the audit hash, checked against the protocol's test vectors.

The vectors were computed with the reference server's algorithms under Node 20.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from typing import Any

import pytest

from grantexd.crypto.canonical import canonical_json, js_json, js_number, js_string
from grantexd.services.audit import compute_entry_hash, entry_hash_text, match_entry_layout
from grantexd.store.audit import AuditEntry

VECTOR_1_TEXT = (
    '{"id":"alog_01J00000000000000000000001","agentId":"ag_01J00000000000000000000000",'
    '"agentDid":"did:grantex:ag_01J00000000000000000000000","grantId":"grnt_01J00000000000000000000000",'
    '"principalId":"user_123","developerId":"dev_01J00000000000000000000000","action":"payment.initiated",'
    '"metadata":{"amount":420,"currency":"USD","merchant":"Air India","nested":{"a":[true,null,1.5],"z":1}},'
    '"timestamp":"2026-02-01T12:34:56.789Z","prevHash":null,"status":"success"}'
)
VECTOR_1_HASH = "416a21e2440a53811443583d7599e65053cf7be4a92785a8908f570af83092ba"
VECTOR_2_HASH = "c988083beb66bfb428c835b4c05376a688c4c009502590e7e25808f9f59a92b3"


def vector_entry(**changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "id": "alog_01J00000000000000000000001",
        "agent_id": "ag_01J00000000000000000000000",
        "agent_did": "did:grantex:ag_01J00000000000000000000000",
        "grant_id": "grnt_01J00000000000000000000000",
        "principal_id": "user_123",
        "developer_id": "dev_01J00000000000000000000000",
        "action": "payment.initiated",
        "metadata": {"merchant": "Air India", "amount": 420, "currency": "USD", "nested": {"z": 1, "a": [True, None, 1.5]}},
        "hash": VECTOR_1_HASH,
        "prev_hash": None,
        "timestamp": datetime(2026, 2, 1, 12, 34, 56, 789000, tzinfo=timezone.utc),
        "status": "success",
    }
    fields.update(changes)
    return AuditEntry(**fields)


def vector_entry_2() -> AuditEntry:
    return vector_entry(
        id="alog_01J00000000000000000000002",
        action="email.sent",
        metadata={},
        timestamp=datetime(2026, 2, 1, 12, 35, 0, tzinfo=timezone.utc),
        prev_hash=VECTOR_1_HASH,
        status="failure",
        hash=VECTOR_2_HASH,
    )


def test_vector_1_hash_text() -> None:
    assert entry_hash_text(vector_entry()) == VECTOR_1_TEXT


def test_vector_1_hash() -> None:
    assert compute_entry_hash(vector_entry()) == VECTOR_1_HASH


def test_vector_1_text_digest() -> None:
    assert hashlib.sha256(VECTOR_1_TEXT.encode()).hexdigest() == VECTOR_1_HASH


def test_vector_2_hash() -> None:
    assert compute_entry_hash(vector_entry_2()) == VECTOR_2_HASH


def test_vector_entries_match_current_layout() -> None:
    assert match_entry_layout(vector_entry()) == "current"
    assert match_entry_layout(vector_entry_2()) == "current"


def test_changed_entry_matches_no_layout() -> None:
    assert match_entry_layout(vector_entry(action="payment.refunded")) is None


def test_hash_depends_on_developer() -> None:
    assert compute_entry_hash(vector_entry(developer_id="dev_other")) != VECTOR_1_HASH


def test_number_formatting_vector() -> None:
    value = {"a": 1.0, "b": 1e21, "c": 1.5e-7, "d": 1e16, "e": -0.0, "f": 0.1, "g": 'é\u0001"\\'}
    assert canonical_json(value) == '{"a":1,"b":1e+21,"c":1.5e-7,"d":10000000000000000,"e":0,"f":0.1,"g":"é\\u0001\\"\\\\"}'


# Expected strings are what Node 20 prints for String(value).
NUMBER_CASES = [
    (0, "0"),
    (-0.0, "0"),
    (1, "1"),
    (-1.5, "-1.5"),
    (420, "420"),
    (0.000001, "0.000001"),
    (1e-7, "1e-7"),
    (123e-20, "1.23e-18"),
    (1e20, "100000000000000000000"),
    (123456789012345680000.0, "123456789012345680000"),
    (1e21, "1e+21"),
    (1.2345e21, "1.2345e+21"),
    (10**21 - 1, "1e+21"),
    (2**53 + 1, "9007199254740992"),
    (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (0.1 + 0.2, "0.30000000000000004"),
]


@pytest.mark.parametrize(("value", "expected"), NUMBER_CASES)
def test_js_number_matches_node(value: int | float, expected: str) -> None:
    assert js_number(value) == expected


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 10**400])
def test_js_number_rejects_non_finite(value: int | float) -> None:
    with pytest.raises(ValueError, match="not finite|outside the range"):
        js_number(value)


def test_canonical_rejects_nan_in_metadata() -> None:
    with pytest.raises(ValueError, match="not finite"):
        canonical_json({"a": [1, {"b": math.nan}]})


def test_booleans_are_not_numbers() -> None:
    assert canonical_json([True, False, 1, 0]) == "[true,false,1,0]"


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 is the surrogate pair D83D DE00, which sorts before U+FFFF in UTF-16.
    value = {"\uffff": 1, "\U0001f600": 2, "a": 3, "B": 4, "\u0001": 5, "é": 6}
    assert canonical_json(value) == '{"\\u0001":5,"B":4,"a":3,"é":6,"😀":2,"\uffff":1}'


def test_canonical_sorts_nested_objects_inside_arrays() -> None:
    assert canonical_json({"b": [{"d": 1, "c": 2}], "a": {}}) == '{"a":{},"b":[{"c":2,"d":1}]}'


def test_canonical_sorts_index_keys_as_strings() -> None:
    assert canonical_json({"9": 1, "10": 2}) == '{"10":2,"9":1}'


def test_js_json_puts_index_keys_first() -> None:
    assert js_json({"b": 1, "10": 2, "9": 3, "a": 4, "01": 5}) == '{"9":3,"10":2,"b":1,"a":4,"01":5}'


def test_js_string_escapes_unpaired_surrogate() -> None:
    assert js_string("\ud800x") == '"\\ud800x"'


def test_js_string_keeps_line_separator_raw() -> None:
    assert js_string("\u2028\u007f") == '"\u2028\u007f"'


def test_canonical_rejects_non_json_values() -> None:
    with pytest.raises(ValueError, match="tuple is not a JSON value"):
        canonical_json({"a": (1, 2)})
