"""Webhook endpoints over HTTP and the events that grant, token and revocation changes queue.

These tests use the shared development-mode daemon, which allows loopback and http: targets,
and real receivers on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from grantex import verify_webhook

from grantexd.webhook_signatures import sign_body, sign_timestamped_body, verify_delivery
from tests.grant_flow import Account, delegate, issue_grant, open_account, register_agent
from tests.support import Daemon, query
from tests.webhook_receiver import Receiver, ReceivedRequest, Reply, running_receiver, wait_until

ALL_EVENTS = ["grant.created", "grant.revoked", "token.issued"]


@pytest.fixture
def account(daemon: Daemon, client: httpx.Client) -> Account:
    return open_account(daemon, client)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        running.script("/hook", Reply(200))
        yield running


def register(
    client: httpx.Client, account: Account, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks", headers=account.headers, json={"url": url, "events": events or ALL_EVENTS}
    )
    assert response.status_code == 201, response.text
    webhook: dict[str, Any] = response.json()
    return webhook


def list_deliveries(client: httpx.Client, account: Account, webhook_id: str, **params: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=account.headers, params=params)
    assert response.status_code == 200, response.text
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


def events_of_type(requests: list[ReceivedRequest], event_type: str) -> list[dict[str, Any]]:
    return [request.json() for request in requests if request.json()["type"] == event_type]


def stored_bodies(daemon: Daemon, webhook_id: str) -> list[bytes]:
    rows = query(
        daemon.environ["DATABASE_URL"], "SELECT body FROM webhook_deliveries WHERE webhook_id = $1", webhook_id
    )
    return [bytes(row["body"]) for row in rows]


def test_create_returns_secret_once(client: httpx.Client, account: Account) -> None:
    created = register(client, account, "http://127.0.0.1:9/hook", ["token.issued", "token.issued"])

    assert created["id"].startswith("wh_")
    assert created["url"] == "http://127.0.0.1:9/hook"
    assert created["events"] == ["token.issued"]
    assert created["secret"].startswith("whsec_")
    assert created["createdAt"].endswith("Z")
    listed = client.get("/v1/webhooks", headers=account.headers).json()["webhooks"]
    assert [webhook["id"] for webhook in listed] == [created["id"]]
    assert "secret" not in listed[0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "Request body must be a JSON object"),
        ({"events": ["token.issued"]}, "url is required"),
        ({"url": 42, "events": ["token.issued"]}, "url is required"),
        ({"url": "ftp://127.0.0.1/hook", "events": ["token.issued"]}, "url must be an absolute http(s) URL"),
        ({"url": "/relative", "events": ["token.issued"]}, "url must be an absolute http(s) URL"),
        ({"url": "http://user:pw@127.0.0.1/hook", "events": ["token.issued"]}, "url must not contain credentials"),
        ({"url": "http://127.0.0.1/hook#part", "events": ["token.issued"]}, "url must not contain a fragment"),
        ({"url": "http://127.0.0.1:99999/hook", "events": ["token.issued"]}, "valid host and port"),
        ({"url": "http://bad_host!/hook", "events": ["token.issued"]}, "is not a valid host name"),
        ({"url": "http://127.0.0.1/" + "a" * 2048, "events": ["token.issued"]}, "url must be at most 2048"),
        ({"url": "http://127.0.0.1/hook"}, "events must be a non-empty array"),
        ({"url": "http://127.0.0.1/hook", "events": []}, "events must be a non-empty array"),
        ({"url": "http://127.0.0.1/hook", "events": "token.issued"}, "events must be a non-empty array"),
        ({"url": "http://127.0.0.1/hook", "events": ["token.minted"]}, "events contains 'token.minted'"),
        ({"url": "http://127.0.0.1/hook", "events": ["webhook.test"]}, "events contains 'webhook.test'"),
        ({"url": "http://127.0.0.1/hook", "events": [7]}, "events contains a non-string value"),
    ],
)
def test_create_rejects_invalid_field(
    client: httpx.Client, account: Account, body: object, message: str
) -> None:
    response = client.post("/v1/webhooks", headers=account.headers, json=body)

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "BAD_REQUEST"
    assert message in response.json()["message"]


def test_create_limit_per_developer(client: httpx.Client, account: Account) -> None:
    for index in range(20):
        register(client, account, f"http://127.0.0.1:9/hook/{index}")

    response = client.post(
        "/v1/webhooks", headers=account.headers, json={"url": "http://127.0.0.1:9/more", "events": ALL_EVENTS}
    )

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "CONFLICT"
    assert "at most 20 webhooks" in response.json()["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/webhooks/{id}"),
        ("GET", "/v1/webhooks/{id}/deliveries"),
        ("POST", "/v1/webhooks/{id}/rotate-secret"),
        ("POST", "/v1/webhooks/{id}/test"),
        ("POST", "/v1/webhooks/{id}/deliveries/whd_unknown/retry"),
    ],
)
def test_routes_hide_other_developers_webhook(
    daemon: Daemon, client: httpx.Client, account: Account, method: str, path: str
) -> None:
    owned = register(client, account, "http://127.0.0.1:9/hook")
    stranger = open_account(daemon, client, name="Stranger")

    unknown = client.request(method, path.format(id="wh_unknown"), headers=account.headers)
    foreign = client.request(method, path.format(id=owned["id"]), headers=stranger.headers)

    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["code"] == "NOT_FOUND"
    assert unknown.json()["requestId"]
    assert foreign.status_code == 404, foreign.text
    assert foreign.json()["message"] == unknown.json()["message"]


def test_retry_unknown_delivery_404(client: httpx.Client, account: Account) -> None:
    webhook = register(client, account, "http://127.0.0.1:9/hook")

    response = client.post(f"/v1/webhooks/{webhook['id']}/deliveries/whd_unknown/retry", headers=account.headers)

    assert response.status_code == 404, response.text
    assert response.json()["message"] == "Delivery not found"


def test_sdk_create_list_delete(client: httpx.Client, account: Account) -> None:
    created = account.sdk.webhooks.create(url="http://127.0.0.1:9/sdk", events=["grant.created", "token.issued"])
    listed = account.sdk.webhooks.list()
    account.sdk.webhooks.delete(created.id)
    after = account.sdk.webhooks.list()

    assert created.id.startswith("wh_")
    assert created.secret.startswith("whsec_")
    assert created.events == ("grant.created", "token.issued")
    assert [webhook.id for webhook in listed.webhooks] == [created.id]
    assert listed.webhooks[0].url == "http://127.0.0.1:9/sdk"
    assert listed.webhooks[0].created_at == created.created_at
    assert after.webhooks == ()


def test_delete_twice_404(client: httpx.Client, account: Account) -> None:
    webhook = register(client, account, "http://127.0.0.1:9/hook")

    first = client.delete(f"/v1/webhooks/{webhook['id']}", headers=account.headers)
    second = client.delete(f"/v1/webhooks/{webhook['id']}", headers=account.headers)

    assert first.status_code == 204
    assert second.status_code == 404
    assert second.json()["message"] == "Webhook not found"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "lost"}, "status must be one of pending, delivered, failed"),
        ({"page": "0"}, "page must be a whole number"),
        ({"pageSize": "x"}, "pageSize must be a whole number"),
    ],
)
def test_deliveries_rejects_bad_query(
    client: httpx.Client, account: Account, params: dict[str, str], message: str
) -> None:
    webhook = register(client, account, "http://127.0.0.1:9/hook")

    response = client.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=account.headers, params=params)

    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


def test_exchange_delivers_grant_and_token_events(
    daemon: Daemon, client: httpx.Client, account: Account, receiver: Receiver
) -> None:
    webhook = register(client, account, receiver.url("/hook"))
    agent = register_agent(client, account)

    grant = issue_grant(client, account, agent["agentId"], principal_id="alice", scopes=["files:read"])
    requests = receiver.wait_for(2, "/hook")

    created = events_of_type(requests, "grant.created")
    issued = events_of_type(requests, "token.issued")
    assert len(created) == 1
    assert len(issued) == 1
    assert created[0]["id"].startswith("evt_")
    assert created[0]["createdAt"].endswith("Z")
    assert created[0]["data"] == {
        "grantId": grant["grantId"],
        "agentId": agent["agentId"],
        "principalId": "alice",
        "scopes": ["files:read"],
        "expiresAt": grant["expiresAt"],
    }
    assert issued[0]["data"]["tokenId"].startswith("tok_")
    assert issued[0]["data"]["grantId"] == grant["grantId"]
    assert issued[0]["data"]["expiresAt"] == grant["expiresAt"]
    assert sorted(request.body for request in requests) == sorted(stored_bodies(daemon, webhook["id"]))
    for request in requests:
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == "Grantex-Webhooks/0.1"
        assert request.headers["x-grantex-signature"] == sign_body(webhook["secret"], request.body)
        timestamp = request.headers["x-grantex-timestamp"]
        assert request.headers["x-grantex-signature-v2"] == sign_timestamped_body(
            webhook["secret"], timestamp, request.body
        )
        assert verify_webhook(request.body, request.headers["x-grantex-signature-v2"], timestamp, webhook["secret"])
        assert verify_delivery(request.body, request.headers, webhook["secret"])
        assert "x-grantex-signature-previous" not in request.headers


def test_subscription_filters_events(client: httpx.Client, account: Account, receiver: Receiver) -> None:
    receiver.script("/revoked-only", Reply(200))
    register(client, account, receiver.url("/revoked-only"), ["grant.revoked"])
    register(client, account, receiver.url("/hook"), ["token.issued"])
    agent = register_agent(client, account)

    grant = issue_grant(client, account, agent["agentId"])
    receiver.wait_for(1, "/hook")
    revoked = client.delete(f"/v1/grants/{grant['grantId']}", headers=account.headers)
    only_revoked = receiver.wait_for(1, "/revoked-only")

    assert revoked.status_code == 204
    assert [request.json()["type"] for request in only_revoked] == ["grant.revoked"]
    assert [request.json()["type"] for request in receiver.received("/hook")] == ["token.issued"]


def test_refresh_queues_token_issued(client: httpx.Client, account: Account, receiver: Receiver) -> None:
    agent = register_agent(client, account)
    grant = issue_grant(client, account, agent["agentId"])
    register(client, account, receiver.url("/hook"))

    refreshed = client.post(
        "/v1/token/refresh",
        headers=account.headers,
        json={"refreshToken": grant["refreshToken"], "agentId": agent["agentId"]},
    )
    requests = receiver.wait_for(1, "/hook")

    assert refreshed.status_code == 201, refreshed.text
    assert [request.json()["type"] for request in requests] == ["token.issued"]
    assert requests[0].json()["data"]["grantId"] == grant["grantId"]
    assert requests[0].json()["data"]["expiresAt"] == grant["expiresAt"]


def test_refresh_reuse_queues_revocation(client: httpx.Client, account: Account, receiver: Receiver) -> None:
    agent = register_agent(client, account)
    grant = issue_grant(client, account, agent["agentId"])
    body = {"refreshToken": grant["refreshToken"], "agentId": agent["agentId"]}
    first = client.post("/v1/token/refresh", headers=account.headers, json=body)
    register(client, account, receiver.url("/hook"), ["grant.revoked"])

    reused = client.post("/v1/token/refresh", headers=account.headers, json=body)
    requests = receiver.wait_for(1, "/hook")

    assert first.status_code == 201, first.text
    assert reused.status_code == 400, reused.text
    assert [request.json()["data"] for request in requests] == [{"grantId": grant["grantId"], "cascade": False}]


def test_delegation_and_cascade_events(daemon: Daemon, client: httpx.Client, account: Account, receiver: Receiver) -> None:
    parent_agent = register_agent(client, account, "parent")
    child_agent = register_agent(client, account, "child")
    parent = issue_grant(client, account, parent_agent["agentId"])
    register(client, account, receiver.url("/hook"))

    delegated = delegate(client, account, parent["grantToken"], child_agent["agentId"])
    assert delegated.status_code == 201, delegated.text
    child = delegated.json()
    receiver.wait_for(2, "/hook")
    revoked = client.delete(f"/v1/grants/{parent['grantId']}", headers=account.headers)
    requests = receiver.wait_for(4, "/hook")

    assert revoked.status_code == 204
    created = events_of_type(requests, "grant.created")
    assert len(created) == 1
    assert created[0]["data"]["grantId"] == child["grantId"]
    assert created[0]["data"]["agentId"] == child_agent["agentId"]
    assert created[0]["data"]["delegationDepth"] == 1
    assert created[0]["data"]["parentGrantId"] == parent["grantId"]
    assert len(events_of_type(requests, "token.issued")) == 1
    revocations = sorted(
        (event["data"] for event in events_of_type(requests, "grant.revoked")), key=lambda data: data["cascade"]
    )
    assert revocations == [
        {"grantId": parent["grantId"], "cascade": False},
        {"grantId": child["grantId"], "cascade": True},
    ]


def test_principal_revocation_queues_event(client: httpx.Client, account: Account, receiver: Receiver) -> None:
    agent = register_agent(client, account)
    grant = issue_grant(client, account, agent["agentId"], principal_id="bob")
    register(client, account, receiver.url("/hook"), ["grant.revoked"])
    session = client.post("/v1/principal-sessions", headers=account.headers, json={"principalId": "bob"})
    assert session.status_code == 201, session.text

    revoked = client.delete(
        f"/v1/principal/grants/{grant['grantId']}",
        headers={"Authorization": f"Bearer {session.json()['sessionToken']}"},
    )
    requests = receiver.wait_for(1, "/hook")

    assert revoked.status_code == 204, revoked.text
    assert [request.json()["data"] for request in requests] == [{"grantId": grant["grantId"], "cascade": False}]


def test_rejected_exchange_queues_nothing(daemon: Daemon, client: httpx.Client, account: Account) -> None:
    webhook = register(client, account, "http://127.0.0.1:9/hook")
    agent = register_agent(client, account)
    authorized = client.post(
        "/v1/authorize",
        headers=account.headers,
        json={"agentId": agent["agentId"], "principalId": "carol", "scopes": ["files:read"]},
    )
    code = authorized.json()["code"]
    exchanged = client.post("/v1/token", headers=account.headers, json={"code": code, "agentId": agent["agentId"]})
    queued_after_first = len(stored_bodies(daemon, webhook["id"]))

    reused = client.post("/v1/token", headers=account.headers, json={"code": code, "agentId": agent["agentId"]})

    assert exchanged.status_code == 201, exchanged.text
    assert reused.status_code == 400, reused.text
    assert queued_after_first == 2
    assert len(stored_bodies(daemon, webhook["id"])) == 2


def test_test_route_sends_webhook_test(client: httpx.Client, account: Account, receiver: Receiver) -> None:
    webhook = register(client, account, receiver.url("/hook"), ["grant.revoked"])

    response = client.post(f"/v1/webhooks/{webhook['id']}/test", headers=account.headers)
    requests = receiver.wait_for(1, "/hook")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    assert response.json()["eventType"] == "webhook.test"
    assert requests[0].json()["type"] == "webhook.test"
    assert requests[0].json()["id"] == response.json()["eventId"]
    assert requests[0].json()["data"] == {"webhookId": webhook["id"]}


def test_rotate_secret_signs_with_both(client: httpx.Client, account: Account, receiver: Receiver) -> None:
    webhook = register(client, account, receiver.url("/hook"))

    rotated = client.post(f"/v1/webhooks/{webhook['id']}/rotate-secret", headers=account.headers)
    client.post(f"/v1/webhooks/{webhook['id']}/test", headers=account.headers)
    request = receiver.wait_for(1, "/hook")[0]

    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != webhook["secret"]
    assert rotated.json()["previousSecretExpiresAt"].endswith("Z")
    timestamp = request.headers["x-grantex-timestamp"]
    assert request.headers["x-grantex-signature"] == sign_body(new_secret, request.body)
    assert request.headers["x-grantex-signature-previous"] == sign_body(webhook["secret"], request.body)
    assert request.headers["x-grantex-signature-v2-previous"] == sign_timestamped_body(
        webhook["secret"], timestamp, request.body
    )
    assert verify_delivery(request.body, request.headers, new_secret)
    assert verify_delivery(request.body, request.headers, webhook["secret"])
    assert not verify_delivery(request.body, request.headers, "whsec_wrong")
    assert not verify_delivery(request.body, request.headers, new_secret, now=float(timestamp) + 301)


def test_deliveries_listing_and_retry(client: httpx.Client, account: Account, receiver: Receiver) -> None:
    receiver.script("/flaky", Reply(500, b"down"), Reply(200))
    webhook = register(client, account, receiver.url("/flaky"), ["grant.created"])
    client.post(f"/v1/webhooks/{webhook['id']}/test", headers=account.headers)
    receiver.wait_for(1, "/flaky")
    wait_until(
        lambda: list_deliveries(client, account, webhook["id"])[0]["lastError"] is not None, 10, "the failed attempt"
    )

    failed_attempt = list_deliveries(client, account, webhook["id"])[0]
    retried = client.post(
        f"/v1/webhooks/{webhook['id']}/deliveries/{failed_attempt['id']}/retry", headers=account.headers
    )
    receiver.wait_for(2, "/flaky")
    wait_until(
        lambda: list_deliveries(client, account, webhook["id"])[0]["status"] == "delivered", 10, "the delivery"
    )
    delivered = list_deliveries(client, account, webhook["id"], status="delivered")
    pending = list_deliveries(client, account, webhook["id"], status="pending")
    again = client.post(f"/v1/webhooks/{webhook['id']}/deliveries/{failed_attempt['id']}/retry", headers=account.headers)

    assert failed_attempt["status"] == "pending"
    assert failed_attempt["attempts"] == 1
    assert failed_attempt["maxAttempts"] == 6
    assert failed_attempt["lastStatusCode"] == 500
    assert failed_attempt["lastError"] == "the receiver answered with status 500"
    assert failed_attempt["nextAttemptAt"] is not None
    assert retried.status_code == 202, retried.text
    assert [delivery["id"] for delivery in delivered] == [failed_attempt["id"]]
    assert delivered[0]["attempts"] == 2
    assert delivered[0]["lastStatusCode"] == 200
    assert delivered[0]["lastError"] is None
    assert delivered[0]["deliveredAt"] is not None
    assert delivered[0]["nextAttemptAt"] is None
    assert pending == []
    assert again.status_code == 409
    assert again.json()["message"] == "Delivery was already delivered"


def test_deliveries_pagination(client: httpx.Client, account: Account) -> None:
    webhook = register(client, account, "http://127.0.0.1:9/hook")
    for _ in range(3):
        client.post(f"/v1/webhooks/{webhook['id']}/test", headers=account.headers)

    everything = list_deliveries(client, account, webhook["id"])
    first_page = list_deliveries(client, account, webhook["id"], page="1", pageSize="2")
    second_page = list_deliveries(client, account, webhook["id"], page="2", pageSize="2")

    assert len(everything) == 3
    assert [delivery["id"] for delivery in first_page + second_page] == [delivery["id"] for delivery in everything]
