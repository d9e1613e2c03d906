"""The consent and permissions pages over HTTP: status codes, escaping, CSRF and redirects."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from grantexd.crypto.keys import generate_signing_key, private_key_pem
from grantexd.http.page_text import describe_duration, format_date
from grantexd.http.pages import add_query_parameters, consent_form_policy
from tests.support import (
    Backends,
    Daemon,
    bearer,
    create_database,
    drop_database,
    new_daemon,
    query,
    signup,
    stop_quietly,
)

MARKUP_NAME = "<script>alert(1)</script><b>x</b>"
REDIRECT_URI = "https://app.example.com/callback?tab=grants&state=stale"


def register_agent(client: httpx.Client, api_key: str, name: str = "Trip Planner", description: str = "Books trips") -> str:
    response = client.post(
        "/v1/agents", json={"name": name, "description": description, "scopes": ["calendar:read"]}, headers=bearer(api_key)
    )
    assert response.status_code == 201, response.text
    agent_id: str = response.json()["agentId"]
    return agent_id


def authorize(client: httpx.Client, api_key: str, agent_id: str, **fields: Any) -> str:
    body = {"agentId": agent_id, "principalId": "alice", "scopes": ["calendar:read"], **fields}
    response = client.post("/v1/authorize", json=body, headers=bearer(api_key))
    assert response.status_code == 201, response.text
    request_id: str = response.json()["authRequestId"]
    return request_id


def live_request(client: httpx.Client, **fields: Any) -> tuple[str, str, str]:
    """Sign up a live developer, register an agent and open a pending request for it."""
    developer = signup(client, mode="live", name="Acme Travel Ltd")
    agent_id = register_agent(client, developer["apiKey"])
    return developer["apiKey"], agent_id, authorize(client, developer["apiKey"], agent_id, **fields)


def form_token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


def consent_api_status(client: httpx.Client, request_id: str) -> int:
    """Return the status of ``GET /v1/consent/{id}``: 200 while the request is still pending."""
    return client.get(f"/v1/consent/{request_id}").status_code


def post_decision(client: httpx.Client, request_id: str, decision: str, token: str | None) -> httpx.Response:
    fields = {"req": request_id, "decision": decision}
    if token is not None:
        fields["csrf_token"] = token
    return client.post("/consent", data=fields)


def decide(client: httpx.Client, request_id: str, decision: str) -> httpx.Response:
    page = client.get("/consent", params={"req": request_id})
    assert page.status_code == 200, page.text
    return post_decision(client, request_id, decision, form_token(page.text))


def csp_directives(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    directives = {}
    for part in policy.split(";"):
        name, _, value = part.strip().partition(" ")
        directives[name] = value
    return directives


def test_consent_page_shows_request(client: httpx.Client) -> None:
    _, _, request_id = live_request(client, scopes=["calendar:read", "payments:initiate:max_500"], expiresIn="90m")

    response = client.get("/consent", params={"req": request_id})
    text = html.unescape(response.text)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Allow Trip Planner to act for you?" in text
    assert "Books trips" in text
    assert "Acme Travel Ltd" in text
    assert "Read your calendar events" in text
    assert "Initiate payments up to 500 in your account's base currency" in text
    assert "Access ends 1 hour 30 minutes after you approve" in text
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+Z">\d{1,2} \w{3} \d{4}, \d\d:\d\d UTC</time>', response.text)
    assert response.text.index('value="deny"') < response.text.index('value="approve"')


def test_consent_page_policy(client: httpx.Client) -> None:
    _, _, request_id = live_request(client, redirectUri="https://app.example.com:8443/cb")

    response = client.get("/consent", params={"req": request_id})
    directives = csp_directives(response)

    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["form-action"] == "'self' https://app.example.com:8443"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "<script" not in response.text
    assert " style=" not in response.text


def test_consent_page_escapes_markup(client: httpx.Client) -> None:
    developer = signup(client, mode="live", name="<i>Evil</i> Corp")
    agent_id = register_agent(client, developer["apiKey"], name=MARKUP_NAME, description='<img src=x onerror="alert(2)">')
    request_id = authorize(client, developer["apiKey"], agent_id, scopes=["calendar:read", "<svg onload=alert(3)>"])

    page = client.get("/consent", params={"req": request_id}).text

    assert "<script>alert(1)" not in page
    assert "<b>x</b>" not in page
    assert "<img src=x" not in page
    assert "<svg" not in page
    assert "<i>Evil</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in page
    assert "&lt;svg onload=alert(3)&gt;" in page
    assert "&lt;i&gt;Evil&lt;/i&gt; Corp" in page


def test_consent_page_without_request_id(client: httpx.Client) -> None:
    response = client.get("/consent")

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Missing request ID" in response.text


def test_consent_page_unknown_request(client: httpx.Client) -> None:
    response = client.get("/consent", params={"req": "areq_01J00000000000000000000000"})

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Request not found" in response.text
    assert "Traceback" not in response.text


def test_consent_page_expired_request(client: httpx.Client, daemon: Daemon) -> None:
    _, _, request_id = live_request(client)
    query(
        daemon.environ["DATABASE_URL"],
        "UPDATE auth_requests SET expires_at = now() - interval '1 minute' WHERE id = $1",
        request_id,
    )

    response = client.get("/consent", params={"req": request_id})

    assert response.status_code == 410
    assert "Request no longer open" in response.text
    assert "csrf_token" not in response.text


def test_consent_page_decided_request(client: httpx.Client) -> None:
    _, _, request_id = live_request(client)
    assert client.post(f"/v1/consent/{request_id}/approve").status_code == 200

    response = client.get("/consent", params={"req": request_id})

    assert response.status_code == 410
    assert "Request no longer open" in response.text


def test_consent_page_error_is_html(client: httpx.Client) -> None:
    response = client.get("/consent", params={"req": "areq_\x00"})

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "NUL" in response.text


def test_approve_redirects_with_code(client: httpx.Client) -> None:
    api_key, agent_id, request_id = live_request(client, redirectUri=REDIRECT_URI, state="s-42")

    response = decide(client, request_id, "approve")
    location = urlsplit(response.headers["Location"])
    parameters = parse_qsl(location.query)
    code = dict(parameters)["code"]
    exchanged = client.post("/v1/token", json={"code": code, "agentId": agent_id}, headers=bearer(api_key))

    assert response.status_code == 303
    assert (location.scheme, location.netloc, location.path) == ("https", "app.example.com", "/callback")
    assert parameters == [("tab", "grants"), ("state", "s-42"), ("code", code)]
    assert exchanged.status_code == 201, exchanged.text
    assert exchanged.json()["scopes"] == ["calendar:read"]


def test_deny_redirects_with_error(client: httpx.Client) -> None:
    _, _, request_id = live_request(client, redirectUri=REDIRECT_URI, state="s-43")

    response = decide(client, request_id, "deny")
    parameters = parse_qsl(urlsplit(response.headers["Location"]).query)

    assert response.status_code == 303
    assert parameters == [("tab", "grants"), ("state", "s-43"), ("error", "access_denied")]
    assert consent_api_status(client, request_id) == 410


def test_approve_without_redirect_shows_result(client: httpx.Client) -> None:
    _, _, request_id = live_request(client)

    response = decide(client, request_id, "approve")

    assert response.status_code == 200
    assert "Location" not in response.headers
    assert "Access approved" in response.text
    assert consent_api_status(client, request_id) == 410


def test_deny_without_redirect_shows_result(client: httpx.Client) -> None:
    _, _, request_id = live_request(client)

    response = decide(client, request_id, "deny")

    assert response.status_code == 200
    assert "Access denied" in response.text


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_decision_without_token_rejected(client: httpx.Client, decision: str) -> None:
    _, _, request_id = live_request(client, redirectUri=REDIRECT_URI)

    response = post_decision(client, request_id, decision, token=None)

    assert response.status_code == 403
    assert "Location" not in response.headers
    assert "Form could not be verified" in response.text
    assert consent_api_status(client, request_id) == 200


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_decision_with_wrong_token_rejected(client: httpx.Client, decision: str) -> None:
    _, _, request_id = live_request(client, redirectUri=REDIRECT_URI)
    _, _, other_request_id = live_request(client)
    other_token = form_token(client.get("/consent", params={"req": other_request_id}).text)

    with_other_token = post_decision(client, request_id, decision, other_token)
    with_garbage = post_decision(client, request_id, decision, "x" * 43)

    assert with_other_token.status_code == 403
    assert with_garbage.status_code == 403
    assert consent_api_status(client, request_id) == 200
    assert consent_api_status(client, other_request_id) == 200


def test_decision_unknown_value_rejected(client: httpx.Client) -> None:
    _, _, request_id = live_request(client)

    response = decide(client, request_id, "maybe")

    assert response.status_code == 400
    assert "Invalid decision" in response.text
    assert consent_api_status(client, request_id) == 200


def test_decision_twice_rejected(client: httpx.Client) -> None:
    _, _, request_id = live_request(client, redirectUri=REDIRECT_URI)
    token = form_token(client.get("/consent", params={"req": request_id}).text)
    assert post_decision(client, request_id, "approve", token).status_code == 303

    again = post_decision(client, request_id, "approve", token)
    deny_after = post_decision(client, request_id, "deny", token)

    assert again.status_code == 410
    assert "Request no longer open" in again.text
    assert deny_after.status_code == 410


def test_consent_needing_security_key(client: httpx.Client) -> None:
    api_key, _, request_id = live_request(client)
    token = form_token(client.get("/consent", params={"req": request_id}).text)
    assert client.patch("/v1/me", json={"fidoRequired": True}, headers=bearer(api_key)).status_code == 200

    page = client.get("/consent", params={"req": request_id})
    approved = post_decision(client, request_id, "approve", token)
    denied = post_decision(client, request_id, "deny", token)

    assert page.status_code == 403
    assert "Security key required" in page.text
    assert "csrf_token" not in page.text
    assert approved.status_code == 403
    assert "Security key required" in approved.text
    assert denied.status_code == 403
    assert consent_api_status(client, request_id) == 200


@pytest.fixture
def twin_daemons(backends: Backends) -> Iterator[tuple[Daemon, Daemon]]:
    """Two instances on one database that share an RSA signing key, as behind a load balancer."""
    url = create_database(backends)
    pem = private_key_pem(generate_signing_key())
    first = new_daemon(backends, url, RSA_PRIVATE_KEY=pem, AUTO_GENERATE_KEYS="false")
    second = new_daemon(backends, url, RSA_PRIVATE_KEY=pem, AUTO_GENERATE_KEYS="false")
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        stop_quietly(second)
        stop_quietly(first)
        drop_database(backends, url)


def test_token_accepted_by_other_instance(twin_daemons: tuple[Daemon, Daemon]) -> None:
    first, second = twin_daemons
    with httpx.Client(base_url=first.base_url, timeout=30) as first_client:
        _, _, request_id = live_request(first_client, redirectUri=REDIRECT_URI)
        token = form_token(first_client.get("/consent", params={"req": request_id}).text)
    with httpx.Client(base_url=second.base_url, timeout=30) as second_client:
        response = post_decision(second_client, request_id, "approve", token)

    assert response.status_code == 303
    assert "code" in dict(parse_qsl(urlsplit(response.headers["Location"]).query))


def test_permissions_page_shell(client: httpx.Client) -> None:
    response = client.get("/permissions", params={"session": "<script>alert(1)</script>"})
    directives = csp_directives(response)
    script_tags = re.findall(r"<script[^>]*>", response.text)

    assert response.status_code == 200
    assert directives["connect-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["form-action"] == "'none'"
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert script_tags == ['<script type="application/json" id="page-text">', '<script src="/static/permissions.js" defer>']
    assert "alert(1)" not in response.text
    assert "<noscript>" in response.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("pages.css", "text/css; charset=utf-8"),
        ("permissions.js", "text/javascript; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
def test_static_file_served(client: httpx.Client, name: str, media_type: str) -> None:
    response = client.get(f"/static/{name}")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == media_type
    assert response.content


def test_static_file_unknown(client: httpx.Client) -> None:
    assert client.get("/static/app.py").status_code == 404


@pytest.mark.parametrize(
    ("uri", "parameters", "expected"),
    [
        ("https://a.example/cb", {"code": "C"}, "https://a.example/cb?code=C"),
        ("https://a.example/cb?x=1&y=", {"code": "C"}, "https://a.example/cb?x=1&y=&code=C"),
        ("https://a.example/cb?state=old&x=1&state=older", {"state": "new"}, "https://a.example/cb?state=new&x=1"),
        ("https://a.example/cb?a=1#frag", {"error": "access_denied"}, "https://a.example/cb?a=1&error=access_denied#frag"),
        ("https://a.example/cb", {"state": "a b&c"}, "https://a.example/cb?state=a+b%26c"),
        ("https://bücher.example/ü", {"code": "C"}, "https://xn--bcher-kva.example/%C3%BC?code=C"),
    ],
)
def test_add_query_parameters(uri: str, parameters: dict[str, str], expected: str) -> None:
    assert add_query_parameters(uri, parameters) == expected


@pytest.mark.parametrize(
    ("redirect_uri", "form_action"),
    [
        (None, "'self'"),
        ("https://app.example.com/cb?x=1", "'self' https://app.example.com"),
        ("http://127.0.0.1:8080/cb", "'self' http://127.0.0.1:8080"),
        ("https://bücher.example/cb", "'self' https://xn--bcher-kva.example"),
        ("http://[::1]:8080/cb", "'self' http:"),
    ],
)
def test_consent_form_policy(redirect_uri: str | None, form_action: str) -> None:
    assert f"; form-action {form_action};" in consent_form_policy(redirect_uri)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 seconds"),
        (1, "1 second"),
        (61, "1 minute 1 second"),
        (5400, "1 hour 30 minutes"),
        (86400, "1 day"),
        (86400 + 6 * 3600 + 59, "1 day 6 hours"),
        (90061, "1 day 1 hour"),
    ],
)
def test_describe_duration(seconds: int, words: str) -> None:
    assert describe_duration(timedelta(seconds=seconds)) == words


def test_format_date_in_utc() -> None:
    moment = datetime(2026, 2, 1, 23, 5, tzinfo=timezone(timedelta(hours=-2)))

    assert format_date(moment) == "2 Feb 2026, 01:05 UTC"
