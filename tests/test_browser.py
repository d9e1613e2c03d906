"""The consent and permissions pages in headless Chromium, against the real daemon.

Needs Debian's ``chromium`` and ``chromium-driver`` packages, without which every test here is
skipped, and the ``selenium`` package from the ``test`` extra. The app behind ``redirectUri`` is
a small HTTP server on 127.0.0.1 started by this module.

With ``GRANTEXD_SCREENSHOTS=1`` the screenshot test writes its PNG files to ``docs/``;
otherwise it writes them to a temporary directory.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.support import REPOSITORY, Daemon, bearer, signup

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "headless Chromium is not installed: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )

WebDriver = webdriver.Chrome

MARKUP_NAME = "<script>alert(1)</script><b>x</b>"
WAIT_SECONDS = 15
LAUNCH_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DESKTOP_WIDTH = 1280
PHONE_WIDTH = 390


class Receiver:
    """The app behind ``redirectUri``: records each request path and returns a short page."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                receiver.paths.append(self.path)
                body = b"<!doctype html><title>App</title><h1>Back in the app</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    app = Receiver()
    app.thread.start()
    yield app
    app.server.shutdown()
    app.server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in LAUNCH_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={DESKTOP_WIDTH},900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps Selenium Manager from looking for a driver to download.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver) -> WebDriverWait:  # type: ignore[type-arg]
    return WebDriverWait(driver, WAIT_SECONDS)


def console_problems(driver: WebDriver) -> list[str]:
    """Return the console's errors since the last call: CSP violations and failed loads show up here."""
    entries = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in entries if entry["level"] in ("SEVERE", "WARNING")]


def live_request(client: httpx.Client, agent_name: str = "Trip Planner", **fields: Any) -> dict[str, str]:
    """Sign up a live developer, register an agent and open a pending request for alice."""
    developer = signup(client, mode="live", name="Acme Travel Ltd")
    headers = bearer(developer["apiKey"])
    agent = client.post(
        "/v1/agents",
        json={"name": agent_name, "description": "Books trips and hotels", "scopes": ["calendar:read"]},
        headers=headers,
    )
    assert agent.status_code == 201, agent.text
    body = {"agentId": agent.json()["agentId"], "principalId": "alice", **fields}
    body.setdefault("scopes", ["calendar:read", "payments:initiate:max_500"])
    authorized = client.post("/v1/authorize", json=body, headers=headers)
    assert authorized.status_code == 201, authorized.text
    return {
        "api_key": developer["apiKey"],
        "agent_id": agent.json()["agentId"],
        "agent_did": agent.json()["did"],
        "request_id": authorized.json()["authRequestId"],
        "consent_url": authorized.json()["consentUrl"],
    }


def exchange(client: httpx.Client, request: dict[str, str], code: str) -> dict[str, Any]:
    response = client.post(
        "/v1/token", json={"code": code, "agentId": request["agent_id"]}, headers=bearer(request["api_key"])
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def verify(client: httpx.Client, api_key: str, token: str) -> bool:
    response = client.post("/v1/tokens/verify", json={"token": token}, headers=bearer(api_key))
    assert response.status_code == 200, response.text
    valid: bool = response.json()["valid"]
    return valid


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_consent_approve_in_browser(browser: WebDriver, client: httpx.Client, receiver: Receiver) -> None:
    request = live_request(client, redirectUri=f"{receiver.base_url}/callback?app=1", state="s-1", expiresIn="2h")
    console_problems(browser)

    browser.get(request["consent_url"])
    heading = browser.find_element(By.TAG_NAME, "h1").text
    agent = browser.find_element(By.ID, "agent-name").text
    developer = browser.find_element(By.ID, "developer-name").text
    scopes = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#scopes li")]
    expiry = browser.find_element(By.ID, "expiry").text
    browser.find_element(By.ID, "approve").click()
    wait(browser).until(expected_conditions.url_contains(receiver.base_url))
    parameters = query_of(browser.current_url)
    exchanged = exchange(client, request, parameters["code"][0])

    assert heading == "Allow Trip Planner to act for you?"
    assert agent == "Trip Planner"
    assert developer == "Acme Travel Ltd"
    assert scopes == [
        "Read your calendar events calendar:read",
        "Initiate payments up to 500 in your account's base currency payments:initiate:max_500",
    ]
    assert expiry.startswith("Access ends 2 hours after you approve, around ")
    assert expiry.endswith(" UTC.")
    assert parameters["app"] == ["1"]
    assert parameters["state"] == ["s-1"]
    assert browser.current_url.removeprefix(receiver.base_url) in receiver.paths
    assert verify(client, request["api_key"], exchanged["grantToken"]) is True
    assert console_problems(browser) == []


def test_consent_deny_in_browser(browser: WebDriver, client: httpx.Client, receiver: Receiver) -> None:
    request = live_request(client, redirectUri=f"{receiver.base_url}/callback", state="s-2")

    browser.get(request["consent_url"])
    browser.find_element(By.ID, "deny").click()
    wait(browser).until(expected_conditions.url_contains(receiver.base_url))
    parameters = query_of(browser.current_url)

    assert parameters["error"] == ["access_denied"]
    assert parameters["state"] == ["s-2"]
    assert "code" not in parameters
    assert client.get(f"/v1/consent/{request['request_id']}").status_code == 410


def test_consent_keyboard_approve(browser: WebDriver, client: httpx.Client) -> None:
    request = live_request(client)

    browser.get(request["consent_url"])
    focus_order = []
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(10):
        focused = browser.switch_to.active_element
        focus_order.append(focused.get_attribute("id"))
        if focus_order[-1] == "approve":
            break
        focused.send_keys(Keys.TAB)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser).until(expected_conditions.title_contains("Access approved"))

    assert focus_order == ["deny", "approve"]
    assert client.get(f"/v1/consent/{request['request_id']}").status_code == 410


def test_consent_shows_markup_as_text(browser: WebDriver, client: httpx.Client) -> None:
    request = live_request(client, agent_name=MARKUP_NAME)

    browser.get(request["consent_url"])
    agent = browser.find_element(By.ID, "agent-name").text
    heading = browser.find_element(By.TAG_NAME, "h1").text
    injected = browser.find_elements(By.CSS_SELECTOR, "main b, main script")

    assert agent == MARKUP_NAME
    assert heading == f"Allow {MARKUP_NAME} to act for you?"
    assert injected == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.accept()


def grant_for(client: httpx.Client, agent_name: str = "Trip Planner") -> tuple[dict[str, str], dict[str, Any]]:
    """Open a request, approve it through the JSON consent API and exchange the code."""
    request = live_request(client, agent_name=agent_name)
    approved = client.post(f"/v1/consent/{request['request_id']}/approve")
    assert approved.status_code == 200, approved.text
    return request, exchange(client, request, approved.json()["code"])


def dashboard_url(client: httpx.Client, api_key: str) -> str:
    response = client.post("/v1/principal-sessions", json={"principalId": "alice"}, headers=bearer(api_key))
    assert response.status_code == 201, response.text
    url: str = response.json()["dashboardUrl"]
    return url


def test_permissions_revoke_in_browser(browser: WebDriver, client: httpx.Client) -> None:
    request, exchanged = grant_for(client, agent_name=MARKUP_NAME)
    logged = client.post(
        "/v1/audit/log",
        json={
            "agentId": request["agent_id"],
            "agentDid": request["agent_did"],
            "grantId": exchanged["grantId"],
            "principalId": "alice",
            "action": "<i>calendar.read</i>",
        },
        headers=bearer(request["api_key"]),
    )
    assert logged.status_code == 201, logged.text
    url = dashboard_url(client, request["api_key"])
    console_problems(browser)

    browser.get(url)
    wait(browser).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#grants .grant")))
    agent_heading = browser.find_element(By.CSS_SELECTOR, "#grants h3").text
    grant_text = browser.find_element(By.CSS_SELECTOR, "#grants .grant").text
    audit_text = browser.find_element(By.CSS_SELECTOR, "#audit li").text
    injected = browser.find_elements(By.CSS_SELECTOR, "main b, main i, main script")
    revoke = browser.find_element(By.CSS_SELECTOR, "#grants .grant button")
    revoke_label = revoke.get_attribute("aria-label")
    revoke.click()
    confirm_text = browser.switch_to.alert.text
    browser.switch_to.alert.accept()
    wait(browser).until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "was revoked"))
    grants_left = browser.find_elements(By.CSS_SELECTOR, "#grants .grant")
    empty_note = browser.find_element(By.ID, "grants-empty").is_displayed()

    assert agent_heading == MARKUP_NAME
    assert "calendar:read" in grant_text
    assert "Access ends in 23 hours 59 minutes" in grant_text or "Access ends in 1 day" in grant_text
    assert "<i>calendar.read</i>" in audit_text
    assert MARKUP_NAME in audit_text
    assert injected == []
    assert revoke_label == f"Revoke access for {MARKUP_NAME}"
    assert confirm_text.startswith(f"Revoke access for {MARKUP_NAME}?")
    assert grants_left == []
    assert empty_note is True
    assert verify(client, request["api_key"], exchanged["grantToken"]) is False
    assert console_problems(browser) == []


def test_permissions_without_session(browser: WebDriver, daemon: Daemon) -> None:
    browser.get(f"{daemon.base_url}/permissions")
    missing = browser.find_element(By.ID, "status").text
    grants_shown = browser.find_element(By.ID, "grants-section").is_displayed()

    assert missing.startswith("This page needs the permissions link")
    assert grants_shown is False


@pytest.mark.parametrize("link", ["/permissions?session=not-a-token", "/permissions#session=not-a-token"])
def test_permissions_invalid_session(browser: WebDriver, daemon: Daemon, link: str) -> None:
    browser.get(f"{daemon.base_url}/permissions")
    browser.get(f"{daemon.base_url}{link}")
    wait(browser).until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "invalid"))
    status = browser.find_element(By.ID, "status").text
    grants_shown = browser.find_element(By.ID, "grants-section").is_displayed()

    assert status.startswith("Your permissions link is invalid or has expired")
    assert grants_shown is False


def two_grants_with_activity(client: httpx.Client) -> str:
    """Give alice two grants from one developer's two agents, log activity, and return the API key."""
    developer = signup(client, mode="live", name="Acme Travel Ltd")
    headers = bearer(developer["apiKey"])
    for name, description, scopes in (
        ("Trip Planner", "Books trips and hotels", ["calendar:read", "payments:initiate:max_500"]),
        ("Inbox Helper", "Sorts and answers routine email", ["email:read", "email:send"]),
    ):
        agent = client.post("/v1/agents", json={"name": name, "description": description, "scopes": scopes}, headers=headers)
        assert agent.status_code == 201, agent.text
        agent_id = agent.json()["agentId"]
        authorized = client.post(
            "/v1/authorize", json={"agentId": agent_id, "principalId": "alice", "scopes": scopes}, headers=headers
        )
        assert authorized.status_code == 201, authorized.text
        code = client.post(f"/v1/consent/{authorized.json()['authRequestId']}/approve").json()["code"]
        exchanged = client.post("/v1/token", json={"code": code, "agentId": agent_id}, headers=headers)
        assert exchanged.status_code == 201, exchanged.text
        logged = client.post(
            "/v1/audit/log",
            json={
                "agentId": agent_id,
                "agentDid": agent.json()["did"],
                "grantId": exchanged.json()["grantId"],
                "principalId": "alice",
                "action": "calendar.read" if name == "Trip Planner" else "email.sent",
            },
            headers=headers,
        )
        assert logged.status_code == 201, logged.text
    api_key: str = developer["apiKey"]
    return api_key


def set_viewport(driver: WebDriver, width: int, height: int = 900) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def save_full_page(driver: WebDriver, width: int, path: Path) -> None:
    """Grow the viewport to the page's height, so the PNG is exactly ``width`` wide with no scroll bar."""
    height: int = driver.execute_script("return document.documentElement.scrollHeight")
    set_viewport(driver, width, height)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    path.write_bytes(base64.b64decode(shot["data"]))


def overflow_width(driver: WebDriver) -> int:
    """Return how many CSS pixels the page is wider than the viewport (0 when it fits)."""
    value: int = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return value


def test_pages_fit_desktop_and_phone(browser: WebDriver, client: httpx.Client, tmp_path: Path) -> None:
    folder = REPOSITORY / "docs" if os.environ.get("GRANTEXD_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(exist_ok=True)
    request = live_request(
        client,
        scopes=["calendar:read", "email:send", "payments:initiate:max_500", "files:read"],
        redirectUri="https://app.example.com/callback",
    )
    pages = {
        "consent": request["consent_url"],
        "permissions": dashboard_url(client, two_grants_with_activity(client)),
    }
    overflow: dict[str, int] = {}
    try:
        for name, url in pages.items():
            for label, width in (("desktop", DESKTOP_WIDTH), ("phone", PHONE_WIDTH)):
                set_viewport(browser, width)
                browser.get(url)
                if name == "permissions":
                    wait(browser).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".grant")))
                overflow[f"{name}-{label}"] = overflow_width(browser)
                save_full_page(browser, width, folder / f"{name}-{label}.png")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    assert overflow == {"consent-desktop": 0, "consent-phone": 0, "permissions-desktop": 0, "permissions-phone": 0}
    assert (folder / "consent-phone.png").stat().st_size > 0

