"""Unit tests of pure helpers: ids, durations, timestamps, scopes, hashing and input checks."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from grantexd.crypto.hashing import constant_time_equal, new_api_key, pkce_s256_challenge, sha256_hex
from grantexd.crypto.ids import new_id, new_ulid
from grantexd.errors import BadRequest
from grantexd.services.scopes import describe_scope
from grantexd.services.timefmt import MAX_DURATION_SECONDS, parse_duration, to_iso, to_iso_from_epoch
from grantexd.services.validation import check_scope_list, redirect_uri_problem

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode_ulid_time(ulid: str) -> int:
    value = 0
    for character in ulid[:10]:
        value = value * 32 + CROCKFORD.index(character)
    return value


def test_ulid_format() -> None:
    for _ in range(200):
        ulid = new_ulid()
        assert len(ulid) == 26
        assert re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", ulid), ulid


def test_ulid_encodes_time() -> None:
    assert decode_ulid_time(new_ulid(1_769_949_296_789)) == 1_769_949_296_789
    assert new_ulid(0).startswith("0000000000")
    assert new_ulid(2**48 - 1).startswith("7ZZZZZZZZZ")


def test_ulid_sorts_by_time() -> None:
    times = [0, 1, 31, 32, 1_000, 1_769_949_296_789, 1_769_949_296_790, 2**48 - 1]
    ulids = [new_ulid(moment) for moment in times]
    assert sorted(ulids) == ulids


def test_ulid_random_part_differs() -> None:
    same_millisecond = {new_ulid(1_769_949_296_789) for _ in range(100)}
    assert len(same_millisecond) == 100


def test_new_id_prefix() -> None:
    assert re.fullmatch(r"grnt_[0-9A-HJKMNP-TV-Z]{26}", new_id("grnt"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1),
        ("59s", 59),
        ("1m", 60),
        ("30m", 1800),
        ("1h", 3600),
        ("24h", 86400),
        ("1d", 86400),
        ("365d", 365 * 86400),
        ("007m", 420),
        (f"{MAX_DURATION_SECONDS}s", MAX_DURATION_SECONDS),
    ],
)
def test_parse_duration_accepts(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "0s",
        "0d",
        "000h",
        "1w",
        "1y",
        "1ms",
        "1.5h",
        "1e3s",
        "-1h",
        "+1h",
        " 1h",
        "1h ",
        "1 h",
        "1h\n",
        "1H",
        "h",
        "1",
        "",
        "١h",
        "１h",
        f"{MAX_DURATION_SECONDS + 1}s",
        "9999999999999999d",
        "9" * 5000 + "s",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("value", [None, 3600, 1.5, ["1h"], {"h": 1}, True])
def test_parse_duration_non_string(value: object) -> None:
    assert parse_duration(value) is None


def test_to_iso_milliseconds() -> None:
    moment = datetime(2026, 2, 1, 12, 34, 56, 789_999, tzinfo=timezone.utc)
    assert to_iso(moment) == "2026-02-01T12:34:56.789Z"


def test_to_iso_zero_fraction() -> None:
    assert to_iso(datetime(2026, 2, 1, 0, 0, 0, tzinfo=timezone.utc)) == "2026-02-01T00:00:00.000Z"
    assert to_iso(datetime(2026, 2, 1, 0, 0, 0, 1_000, tzinfo=timezone.utc)) == "2026-02-01T00:00:00.001Z"


def test_to_iso_converts_offset() -> None:
    moment = datetime(2026, 2, 1, 14, 4, 56, 5_000, tzinfo=timezone(timedelta(hours=1, minutes=30)))
    assert to_iso(moment) == "2026-02-01T12:34:56.005Z"


def test_to_iso_from_epoch() -> None:
    assert to_iso_from_epoch(0) == "1970-01-01T00:00:00.000Z"
    assert to_iso_from_epoch(1_769_949_296) == "2026-02-01T12:34:56.000Z"


@pytest.mark.parametrize(
    ("scope", "description"),
    [
        ("calendar:read", "Read your calendar events"),
        ("calendar:write", "Create, modify, and delete your calendar events"),
        ("email:read", "Read your email messages"),
        ("email:send", "Send emails on your behalf"),
        ("email:delete", "Delete your email messages"),
        ("files:read", "Read your files and documents"),
        ("files:write", "Create and modify your files"),
        ("payments:read", "View your payment history and balances"),
        ("payments:initiate", "Initiate payments of any amount"),
        ("profile:read", "Read your profile and identity information"),
        ("contacts:read", "Read your address book and contacts"),
        ("payments:initiate:max_500", "Initiate payments up to 500 in your account's base currency"),
        ("payments:initiate:max_0", "Initiate payments up to 0 in your account's base currency"),
        ("payments:initiate:max_", "payments:initiate:max_"),
        ("payments:initiate:max_5x", "payments:initiate:max_5x"),
        ("payments:initiate:max_5\n", "payments:initiate:max_5\n"),
        ("payments:initiate:max_٥", "payments:initiate:max_٥"),
        ("xpayments:initiate:max_5", "xpayments:initiate:max_5"),
        ("Calendar:Read", "Calendar:Read"),
        ("custom:scope", "custom:scope"),
    ],
)
def test_describe_scope(scope: str, description: str) -> None:
    assert describe_scope(scope) == description


def test_api_key_hash_vector() -> None:
    expected = "d6830b871abfb4520fb3268236838f7b1a586296e47c0475eaa9496c436bfff8"
    assert sha256_hex("gx_test_example_key_000000") == expected


def test_new_api_key_format() -> None:
    live = new_api_key("live")
    sandbox = new_api_key("sandbox")
    assert re.fullmatch(r"gx_live_[A-Za-z0-9_-]{43}", live)
    assert re.fullmatch(r"gx_test_[A-Za-z0-9_-]{43}", sandbox)
    assert new_api_key("live") != live


def test_pkce_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_constant_time_equal() -> None:
    assert constant_time_equal("abc", "abc")
    assert not constant_time_equal("abc", "abd")
    assert not constant_time_equal("abc", "abcd")


@pytest.mark.parametrize(
    "scopes",
    [[], ["a"], ["x" * 256], [f"s{index}" for index in range(100)], ["a", "a"], ["with space"]],
)
def test_check_scope_list_accepts(scopes: list[str]) -> None:
    assert check_scope_list(scopes) == scopes


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a", "Invalid scope format"),
        (None, "Invalid scope format"),
        ({"a": 1}, "Invalid scope format"),
        ([""], "Invalid scope format"),
        (["  "], "Invalid scope format"),
        (["x" * 257], "Invalid scope format"),
        ([1], "Invalid scope format"),
        ([None], "Invalid scope format"),
        ([["a"]], "Invalid scope format"),
        (["ok", ""], "Invalid scope format"),
        ([f"s{index}" for index in range(101)], "Too many scopes (max 100)"),
        ([f"s{index}" for index in range(100)] + [""], "Invalid scope format"),
    ],
)
def test_check_scope_list_rejects(value: object, message: str) -> None:
    with pytest.raises(BadRequest, match=f"^{re.escape(message)}$"):
        check_scope_list(value)


def test_check_scope_list_empty_not_allowed() -> None:
    with pytest.raises(BadRequest, match="^Invalid scope format$"):
        check_scope_list([], allow_empty=False)


def test_check_scope_list_copies() -> None:
    scopes = ["a"]
    checked = check_scope_list(scopes)
    checked.append("b")
    assert scopes == ["a"]


ABSOLUTE = "URL must be absolute and valid"
CREDENTIALS = "URL must not contain embedded credentials"
HOSTNAME = "URL must include a hostname"
PROTOCOL = "URL protocol must be one of: https:, http:"
HTTP_DISABLED = "HTTP URLs are disabled; use HTTPS"
PRIVATE = "Private, loopback, and link-local hosts are not allowed"


@pytest.mark.parametrize(
    ("url", "development", "production"),
    [
        ("https://app.example.com/callback", None, None),
        ("https://app.example.com:8443/cb?x=1#frag", None, None),
        ("https://8.8.8.8/cb", None, None),
        ("https://пример.рф/cb", None, None),
        ("http://app.example.com/cb", None, HTTP_DISABLED),
        ("http://localhost:3000/cb", None, HTTP_DISABLED),
        ("https://localhost/cb", None, PRIVATE),
        ("https://LOCALHOST./cb", None, PRIVATE),
        ("https://app.localhost/cb", None, PRIVATE),
        ("https://127.0.0.1/cb", None, PRIVATE),
        ("https://10.1.2.3/cb", None, PRIVATE),
        ("https://172.16.0.1/cb", None, PRIVATE),
        ("https://192.168.1.1/cb", None, PRIVATE),
        ("https://169.254.169.254/latest", None, PRIVATE),
        ("https://0.0.0.0/cb", None, PRIVATE),
        ("https://[::1]/cb", None, PRIVATE),
        ("https://[fe80::1]/cb", None, PRIVATE),
        ("https://[fd00::1]/cb", None, PRIVATE),
        ("https://[::ffff:127.0.0.1]/cb", None, PRIVATE),
        # Numeric forms a browser reads as 127.0.0.1.
        ("https://2130706433/cb", None, PRIVATE),
        ("https://0x7f.1/cb", None, PRIVATE),
        ("https://0177.0.0.1/cb", None, PRIVATE),
        ("https://127.1/cb", None, PRIVATE),
        ("", ABSOLUTE, ABSOLUTE),
        ("/callback", ABSOLUTE, ABSOLUTE),
        ("callback", ABSOLUTE, ABSOLUTE),
        ("//app.example.com/cb", ABSOLUTE, ABSOLUTE),
        ("https://", ABSOLUTE, ABSOLUTE),
        ("http://:80/cb", ABSOLUTE, ABSOLUTE),
        ("https://app.example.com:99999/cb", ABSOLUTE, ABSOLUTE),
        ("https://app.example.com:port/cb", ABSOLUTE, ABSOLUTE),
        ("https://[not-ipv6]/cb", ABSOLUTE, ABSOLUTE),
        ("https://exa mple.com/cb", ABSOLUTE, ABSOLUTE),
        ("https://exa<mple.com/cb", ABSOLUTE, ABSOLUTE),
        ("https://exa%20mple.com/cb", ABSOLUTE, ABSOLUTE),
        ("https://256.1.1.1/cb", ABSOLUTE, ABSOLUTE),
        ("https://1.2.3.4.5/cb", ABSOLUTE, ABSOLUTE),
        ("https://app.example.com/" + "a" * 2025, ABSOLUTE, ABSOLUTE),
        ("https://user:secret@app.example.com/cb", CREDENTIALS, CREDENTIALS),
        ("https://user@app.example.com/cb", CREDENTIALS, CREDENTIALS),
        ("https://:secret@app.example.com/cb", CREDENTIALS, CREDENTIALS),
        ("file:///etc/passwd", HOSTNAME, HOSTNAME),
        ("javascript:alert(1)", HOSTNAME, HOSTNAME),
        ("mailto:someone@example.com", HOSTNAME, HOSTNAME),
        ("ftp://files.example.com/cb", PROTOCOL, PROTOCOL),
        ("myapp://callback.example/cb", PROTOCOL, PROTOCOL),
        ("ws://app.example.com/cb", PROTOCOL, PROTOCOL),
    ],
)
def test_redirect_uri_problem(url: str, development: str | None, production: str | None) -> None:
    assert redirect_uri_problem(url, production=False) == development
    assert redirect_uri_problem(url, production=True) == production


def test_redirect_uri_length_limit() -> None:
    base = "https://app.example.com/"
    assert redirect_uri_problem(base + "a" * (2048 - len(base)), production=True) is None
    assert redirect_uri_problem(base + "a" * (2049 - len(base)), production=True) == ABSOLUTE
