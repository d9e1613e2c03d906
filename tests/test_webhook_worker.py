"""The webhook delivery worker against real receivers: retries, misbehaving receivers, restarts,
two instances on one database, and production address checks.

Every receiver listens on 127.0.0.1. The production tests use targets that are rejected before
any connection is made, and the one host name that must fail to resolve has a 64-character
label, which the C library rejects without sending a DNS query.
"""

from __future__ import annotations

import datetime
import signal
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from grantexd.dev import free_port
from grantexd.webhook_signatures import verify_delivery
from tests.grant_flow import Account, issue_grant, open_account, register_agent
from tests.support import Backends, Daemon, create_database, drop_database, new_daemon, query, stop_quietly
from tests.webhook_receiver import (
    Endless,
    Hold,
    Raw,
    Receiver,
    Reply,
    Reset,
    Trickle,
    running_receiver,
    wait_until,
)


def register(client: httpx.Client, account: Account, url: str, events: list[str] | None = None) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks", headers=account.headers, json={"url": url, "events": events or ["token.issued"]}
    )
    assert response.status_code == 201, response.text
    webhook: dict[str, Any] = response.json()
    return webhook


def deliveries(client: httpx.Client, account: Account, webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=account.headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


def attempt_finished(delivery: dict[str, Any]) -> bool:
    return delivery["status"] != "pending" or delivery["lastError"] is not None


def worker_errors(daemon: Daemon) -> list[dict[str, Any]]:
    return [
        line
        for line in daemon.json_lines()
        if line.get("level") in ("error", "fatal") or "unparsed" in line or "Traceback" in str(line)
    ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def start_daemon(backends: Backends, database_url: str, **overrides: str) -> Iterator[Daemon]:
    daemon = new_daemon(backends, database_url, **overrides)
    daemon.start()
    try:
        yield daemon
    finally:
        stop_quietly(daemon)


@pytest.fixture(scope="module")
def module_database(backends: Backends) -> Iterator[str]:
    url = create_database(backends)
    yield url
    drop_database(backends, url)


@pytest.fixture(scope="module")
def fast_retry_daemon(backends: Backends, module_database: str) -> Iterator[Daemon]:
    """A daemon whose first retry comes after 50 ms instead of 30 s."""
    yield from start_daemon(backends, module_database, WEBHOOK_RETRY_DELAY="0.05")


@pytest.fixture(scope="module")
def short_timeout_daemon(backends: Backends) -> Iterator[Daemon]:
    """A daemon whose attempts time out after 1 s and whose retries wait the default 30 s."""
    url = create_database(backends)
    yield from start_daemon(backends, url, WEBHOOK_TIMEOUT="1")
    drop_database(backends, url)


def test_delivery_woken_by_notify(backends: Backends, database_url: str, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(200))
    daemon = new_daemon(backends, database_url)
    daemon.start()
    try:
        with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
            account = open_account(daemon, client)
            webhook = register(client, account, receiver.url("/hook"))
            agent = register_agent(client, account)

            grant = issue_grant(client, account, agent["agentId"])
            # The poll runs every 30 s, so arriving well before that needs the NOTIFY wake-up.
            request = receiver.wait_for(1, "/hook", timeout_seconds=5)[0]
    finally:
        stop_quietly(daemon)

    stored = query(database_url, "SELECT body, status FROM webhook_deliveries WHERE webhook_id = $1", webhook["id"])
    assert request.body == bytes(stored[0]["body"])
    assert stored[0]["status"] == "delivered"
    assert request.json()["data"]["grantId"] == grant["grantId"]
    assert verify_delivery(request.body, request.headers, webhook["secret"])


def test_retry_after_server_error(fast_retry_daemon: Daemon, receiver: Receiver) -> None:
    release = threading.Event()
    receiver.script("/flaky", Reply(500, b"try later"), Hold(release, Reply(200)))
    with httpx.Client(base_url=fast_retry_daemon.base_url, timeout=30) as client:
        account = open_account(fast_retry_daemon, client)
        webhook = register(client, account, receiver.url("/flaky"))
        issue_grant(client, account, register_agent(client, account)["agentId"])

        receiver.wait_for(2, "/flaky")
        during_retry = deliveries(client, account, webhook["id"])[0]
        release.set()
        wait_until(lambda: deliveries(client, account, webhook["id"])[0]["status"] == "delivered", 10, "delivery")
        after = deliveries(client, account, webhook["id"])[0]

    first, second = receiver.received("/flaky")
    assert first.body == second.body
    assert first.json()["id"] == second.json()["id"]
    assert during_retry["status"] == "pending"
    assert during_retry["attempts"] == 2
    assert during_retry["lastStatusCode"] == 500
    assert during_retry["lastError"] == "the receiver answered with status 500"
    assert after["attempts"] == 2
    assert after["lastStatusCode"] == 200
    assert after["lastError"] is None


def test_exhausted_retries_then_manual_retry(fast_retry_daemon: Daemon, receiver: Receiver) -> None:
    receiver.script("/down", Reply(503))
    with httpx.Client(base_url=fast_retry_daemon.base_url, timeout=30) as client:
        account = open_account(fast_retry_daemon, client)
        webhook = register(client, account, receiver.url("/down"))
        issue_grant(client, account, register_agent(client, account)["agentId"])

        wait_until(lambda: deliveries(client, account, webhook["id"])[0]["status"] == "failed", 20, "failed status")
        failed = deliveries(client, account, webhook["id"])[0]
        attempts_seen = len(receiver.received("/down"))
        receiver.script("/down", Reply(200))
        retried = client.post(f"/v1/webhooks/{webhook['id']}/deliveries/{failed['id']}/retry", headers=account.headers)
        wait_until(lambda: deliveries(client, account, webhook["id"])[0]["status"] == "delivered", 10, "delivery")
        delivered = deliveries(client, account, webhook["id"])[0]

    assert failed["attempts"] == 6
    assert failed["maxAttempts"] == 6
    assert failed["lastStatusCode"] == 503
    assert failed["nextAttemptAt"] is None
    assert attempts_seen == 6
    assert retried.status_code == 202, retried.text
    assert retried.json()["maxAttempts"] == 7
    assert delivered["attempts"] == 7
    assert len(receiver.received("/down")) == 7


def test_slow_receiver_does_not_hold_back_others(fast_retry_daemon: Daemon, receiver: Receiver) -> None:
    release = threading.Event()
    receiver.script("/slow", Hold(release))
    receiver.script("/fast", Reply(200))
    with httpx.Client(base_url=fast_retry_daemon.base_url, timeout=30) as client:
        account = open_account(fast_retry_daemon, client)
        register(client, account, receiver.url("/slow"))
        register(client, account, receiver.url("/fast"))
        agent = register_agent(client, account)
        try:
            for _ in range(6):
                issue_grant(client, account, agent["agentId"])

            fast = receiver.wait_for(6, "/fast")
            slow_while_held = len(receiver.received("/slow"))
            still_held = not release.is_set()
        finally:
            release.set()
        receiver.wait_for(6, "/slow")

    assert len(fast) == 6
    assert still_held
    # At most four attempts run at once for one endpoint, and none of them has a reply yet.
    assert 1 <= slow_while_held <= 4


def tls_context(directory: Path) -> ssl.SSLContext:
    """Return a server context with a self-signed certificate that no client trusts."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / "certificate.pem"
    key_path = directory / "key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate_path, key_path)
    return context


# path, scripted reply, expected status, expected lastStatusCode, expected text in lastError
MISBEHAVIOURS: list[tuple[str, Any, str, int | None, str | None]] = [
    ("/no-content", Reply(204), "delivered", 204, None),
    ("/not-modified", Reply(304), "pending", 304, "status 304"),
    ("/switching", Raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"), "pending", None, "not valid HTTP"),
    ("/continue-then-ok", Raw(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), "delivered", 200, None),
    ("/informational-only", Raw(b"HTTP/1.1 102 Processing\r\n\r\n"), "pending", None, "not valid HTTP"),
    ("/redirect", Reply(302, b"", (("Location", "/redirect-target"),)), "pending", 302, "redirects are not followed"),
    ("/endless-ok", Endless(200), "delivered", 200, None),
    ("/endless-error", Endless(500), "pending", 500, "status 500"),
    ("/trickle", Trickle(200), "delivered", 200, None),
    ("/silent", Hold(threading.Event()), "pending", None, "timed out"),
    ("/reset", Reset(), "pending", None, ""),
    ("/garbage", Raw(b"NOT HTTP AT ALL\r\n\r\n"), "pending", None, "not valid HTTP"),
    ("/huge-header", Raw(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"), "pending", None, "not valid HTTP"),
]


def test_misbehaving_receivers(short_timeout_daemon: Daemon, receiver: Receiver, tmp_path: Path) -> None:
    daemon = short_timeout_daemon
    for path, action, _status, _code, _error in MISBEHAVIOURS:
        receiver.script(path, action)
    receiver.script("/redirect-target", Reply(200))
    closed_port = free_port()
    with running_receiver(tls_context(tmp_path)) as tls_receiver, httpx.Client(
        base_url=daemon.base_url, timeout=30
    ) as client:
        tls_receiver.script("/tls", Reply(200))
        account = open_account(daemon, client)
        cases = list(MISBEHAVIOURS) + [
            ("tls", None, "pending", None, "CERTIFICATE_VERIFY_FAILED"),
            ("refused", None, "pending", None, "connection to 127.0.0.1 failed"),
            ("dns", None, "pending", None, "DNS resolution of"),
        ]
        urls = {path: receiver.url(path) for path, *_rest in MISBEHAVIOURS}
        urls["tls"] = tls_receiver.url("/tls")
        urls["refused"] = f"http://127.0.0.1:{closed_port}/hook"
        urls["dns"] = "http://127.0.0.1:9/later-unresolvable"
        webhooks = {path: register(client, account, url)["id"] for path, url in urls.items()}
        # A host name that stops resolving after registration: a 64-character label fails in
        # the resolver library itself.
        query(
            daemon.environ["DATABASE_URL"],
            "UPDATE webhooks SET url = $1 WHERE id = $2",
            "http://" + "a" * 64 + ".example/hook",
            webhooks["dns"],
        )

        issue_grant(client, account, register_agent(client, account)["agentId"])
        wait_until(
            lambda: all(attempt_finished(deliveries(client, account, webhook_id)[0]) for webhook_id in webhooks.values()),
            20,
            "a first attempt to every receiver",
        )
        outcomes = {path: deliveries(client, account, webhook_id)[0] for path, webhook_id in webhooks.items()}
        live = client.get("/health/live")

    for path, _action, status, code, error in cases:
        outcome = outcomes[path]
        assert outcome["status"] == status, (path, outcome)
        assert outcome["attempts"] == 1, (path, outcome)
        assert outcome["lastStatusCode"] == code, (path, outcome)
        if error is None:
            assert outcome["lastError"] is None, (path, outcome)
        else:
            assert error in outcome["lastError"], (path, outcome)
    assert receiver.received("/redirect-target") == []
    assert tls_receiver.received("/tls") == []
    assert live.status_code == 200
    assert daemon.process is not None and daemon.process.poll() is None
    assert worker_errors(daemon) == []


def test_sigterm_mid_attempt_retried_after_restart(backends: Backends, database_url: str, receiver: Receiver) -> None:
    release = threading.Event()
    receiver.script("/hook", Hold(release), Reply(200))
    first = new_daemon(backends, database_url, SHUTDOWN_GRACE_PERIOD="0.5")
    first.start()
    try:
        with httpx.Client(base_url=first.base_url, timeout=30) as client:
            account = open_account(first, client)
            webhook = register(client, account, receiver.url("/hook"))
            issue_grant(client, account, register_agent(client, account)["agentId"])
            receiver.wait_for(1, "/hook")
        first.signal(signal.SIGTERM)
        exit_code = first.wait_exit()
    finally:
        stop_quietly(first)
        release.set()
    after_stop = query(
        database_url, "SELECT status, attempts, last_error, lease_id FROM webhook_deliveries WHERE webhook_id = $1",
        webhook["id"],
    )

    second = new_daemon(backends, database_url)
    second.start()
    try:
        requests = receiver.wait_for(2, "/hook")
        wait_until(
            lambda: query(database_url, "SELECT status FROM webhook_deliveries")[0]["status"] == "delivered",
            10,
            "the retried delivery to be recorded",
        )
    finally:
        stop_quietly(second)
    final = query(database_url, "SELECT status, attempts FROM webhook_deliveries WHERE webhook_id = $1", webhook["id"])

    assert exit_code == 0
    assert any(line.get("msg") == "webhook.delivery.interrupted" for line in first.json_lines())
    assert len(after_stop) == 1
    assert after_stop[0]["status"] == "pending"
    assert after_stop[0]["attempts"] == 1
    assert "interrupted by a shutdown" in after_stop[0]["last_error"]
    assert after_stop[0]["lease_id"] is None
    assert requests[0].json()["id"] == requests[1].json()["id"]
    assert requests[0].body == requests[1].body
    assert final == [{"status": "delivered", "attempts": 2}]


def test_two_instances_deliver_each_event_once(backends: Backends, database_url: str, receiver: Receiver) -> None:
    event_count = 300
    receiver.script("/count", Reply(200))
    daemons = [new_daemon(backends, database_url), new_daemon(backends, database_url)]
    try:
        for daemon in daemons:
            daemon.start()
        clients = [httpx.Client(base_url=daemon.base_url, timeout=30) for daemon in daemons]
        account = open_account(daemons[0], clients[0])
        webhook = register(clients[0], account, receiver.url("/count"))

        def queue_test_events(client: httpx.Client) -> list[int]:
            return [
                client.post(f"/v1/webhooks/{webhook['id']}/test", headers=account.headers).status_code
                for _ in range(event_count // 2)
            ]

        # Both instances queue events at the same time, so both workers claim from one table.
        with ThreadPoolExecutor(max_workers=2) as executor:
            statuses = [status for result in executor.map(queue_test_events, clients) for status in result]
        assert statuses == [202] * event_count
        receiver.wait_for(event_count, "/count", timeout_seconds=60)
        wait_until(
            lambda: query(database_url, "SELECT count(*) AS n FROM webhook_deliveries WHERE status <> 'delivered'")[0]["n"]
            == 0,
            20,
            "every delivery to be recorded",
        )
        for client in clients:
            client.close()
    finally:
        for daemon in daemons:
            stop_quietly(daemon)

    event_ids = [request.json()["id"] for request in receiver.received("/count")]
    attempts = query(database_url, "SELECT attempts, count(*) AS n FROM webhook_deliveries GROUP BY attempts")
    assert len(event_ids) == event_count
    assert len(set(event_ids)) == event_count
    assert attempts == [{"attempts": 1, "n": event_count}]
    for daemon in daemons:
        assert worker_errors(daemon) == []


def rsa_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def production_daemon(backends: Backends) -> Iterator[Daemon]:
    url = create_database(backends)
    yield from start_daemon(
        backends, url, GRANTEX_ENV="production", AUTO_GENERATE_KEYS="false", RSA_PRIVATE_KEY=rsa_private_key_pem()
    )
    drop_database(backends, url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1/hook", "'127.0.0.1' resolves to 127.0.0.1, which is a loopback address"),
        ("https://localhost/hook", "'localhost' resolves to 127.0.0.1, which is a loopback address"),
        ("https://2130706433/hook", "resolves to 127.0.0.1, which is a loopback address"),
        ("https://[::1]/hook", "resolves to ::1, which is a loopback address"),
        ("https://[::ffff:127.0.0.1]/hook", "a loopback address (127.0.0.1 embedded in IPv6)"),
        ("https://10.1.2.3/hook", "which is a private address"),
        ("https://192.168.0.10/hook", "which is a private address"),
        ("https://169.254.169.254/latest", "which is a cloud metadata address"),
        ("https://169.254.10.10/hook", "which is a link-local address"),
        ("https://100.64.0.1/hook", "which is a carrier-grade NAT address"),
        ("https://0.0.0.0/hook", "which is an unspecified address"),
        ("https://224.0.0.1/hook", "which is a multicast address"),
        ("https://[fd00::1]/hook", "which is a private address"),
        ("https://192.0.2.1/hook", "which is a private address"),
        ("http://127.0.0.1/hook", "url must use https"),
    ],
)
def test_production_rejects_private_target(production_daemon: Daemon, url: str, message: str) -> None:
    with httpx.Client(base_url=production_daemon.base_url, timeout=30) as client:
        account = open_account(production_daemon, client)
        response = client.post("/v1/webhooks", headers=account.headers, json={"url": url, "events": ["token.issued"]})

    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


def test_production_rejects_private_target_at_send(production_daemon: Daemon, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(200))
    database_url = production_daemon.environ["DATABASE_URL"]
    with httpx.Client(base_url=production_daemon.base_url, timeout=30) as client:
        account = open_account(production_daemon, client)
        # Registration would reject this target, so the row represents a host whose DNS
        # answer changed to a loopback address after it was registered.
        query(
            database_url,
            "INSERT INTO webhooks (id, developer_id, url, events, secret) VALUES ($1, $2, $3, $4, $5)",
            "wh_rebound",
            account.developer_id,
            f"https://localhost:{receiver.port}/hook",
            ["token.issued"],
            "whsec_test",
        )
        issue_grant(client, account, register_agent(client, account)["agentId"])
        wait_until(lambda: attempt_finished(deliveries(client, account, "wh_rebound")[0]), 10, "the rejected attempt")
        outcome = deliveries(client, account, "wh_rebound")[0]

    assert outcome["status"] == "pending"
    assert outcome["lastStatusCode"] is None
    assert "'localhost' resolves to 127.0.0.1, which is a loopback address" in outcome["lastError"]
    assert receiver.received() == []
