"""Races and cross-site requests found by probing the daemon: each must end consistently."""

from __future__ import annotations

import httpx
import trio

from tests.support import Daemon, bearer, query, signup


def database_url(daemon: Daemon) -> str:
    return daemon.environ["DATABASE_URL"]


async def test_agent_delete_during_traffic(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client, mode="sandbox")
    auth = bearer(developer["apiKey"])
    parent_agent = client.post("/v1/agents", json={"name": "parent"}, headers=auth).json()
    doomed = client.post("/v1/agents", json={"name": "doomed"}, headers=auth).json()
    request = client.post(
        "/v1/authorize", json={"agentId": parent_agent["agentId"], "principalId": "p", "scopes": ["a"]}, headers=auth
    ).json()
    parent = client.post("/v1/token", json={"code": request["code"], "agentId": parent_agent["agentId"]}, headers=auth)
    parent_token = parent.json()["grantToken"]
    statuses: list[int] = []

    async with httpx.AsyncClient(base_url=daemon.base_url, headers=auth, timeout=30) as http:

        async def delegate() -> None:
            body = {"parentGrantToken": parent_token, "subAgentId": doomed["agentId"], "scopes": ["a"]}
            statuses.append((await http.post("/v1/grants/delegate", json=body)).status_code)

        async def authorize() -> None:
            body = {"agentId": doomed["agentId"], "principalId": "q", "scopes": ["a"]}
            statuses.append((await http.post("/v1/authorize", json=body)).status_code)

        async def delete() -> None:
            await trio.sleep(0.05)
            statuses.append((await http.delete(f"/v1/agents/{doomed['agentId']}")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(15):
                nursery.start_soon(delegate)
                nursery.start_soon(authorize)
            nursery.start_soon(delete)

    assert all(status < 500 for status in statuses), statuses
    assert statuses.count(204) == 1
    assert set(statuses) <= {201, 204, 404}
    leftovers = query(database_url(daemon), "SELECT count(*) AS grants FROM grants WHERE agent_id = $1", doomed["agentId"])
    assert leftovers[0]["grants"] == 0


async def test_concurrent_key_rotations_one_wins(daemon: Daemon, client: httpx.Client) -> None:
    developer = signup(client, mode="sandbox")
    responses: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=daemon.base_url, timeout=30) as http:

        async def rotate() -> None:
            responses.append(await http.post("/v1/keys/rotate", headers=bearer(developer["apiKey"])))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(rotate)

    winners = [response for response in responses if response.status_code == 200]
    assert len(winners) == 1
    assert {response.status_code for response in responses} == {200, 401}
    new_key = winners[0].json()["apiKey"]
    assert client.get("/v1/me", headers=bearer(new_key)).status_code == 200
    assert client.get("/v1/me", headers=bearer(developer["apiKey"])).status_code == 401


def test_refresh_replay_after_revocation(client: httpx.Client) -> None:
    developer = signup(client, mode="sandbox")
    auth = bearer(developer["apiKey"])
    agent = client.post("/v1/agents", json={"name": "a"}, headers=auth).json()
    request = client.post(
        "/v1/authorize", json={"agentId": agent["agentId"], "principalId": "p", "scopes": ["a"]}, headers=auth
    ).json()
    issued = client.post("/v1/token", json={"code": request["code"], "agentId": agent["agentId"]}, headers=auth).json()
    body = {"refreshToken": issued["refreshToken"], "agentId": agent["agentId"]}
    first = client.post("/v1/token/refresh", json=body, headers={**auth, "Idempotency-Key": "retry-1"})
    assert first.status_code == 201
    assert client.delete(f"/v1/grants/{issued['grantId']}", headers=auth).status_code == 204

    replay = client.post("/v1/token/refresh", json=body, headers={**auth, "Idempotency-Key": "retry-1"})
    assert replay.status_code == 400
    assert replay.json()["message"] == "Grant has been revoked"


def test_consent_form_rejects_foreign_origin(client: httpx.Client) -> None:
    developer = signup(client, mode="live")
    auth = bearer(developer["apiKey"])
    agent = client.post("/v1/agents", json={"name": "a"}, headers=auth).json()
    request = client.post(
        "/v1/authorize", json={"agentId": agent["agentId"], "principalId": "p", "scopes": ["a"]}, headers=auth
    ).json()
    page = client.get(f"/consent?req={request['authRequestId']}").text
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    form = {"req": request["authRequestId"], "csrf_token": token, "decision": "approve"}

    cross_site = client.post("/consent", data=form, headers={"Origin": "https://evil.example"})
    assert cross_site.status_code == 403
    assert client.get(f"/v1/consent/{request['authRequestId']}").json()["status"] == "pending"

    cross_site_fetch = client.post("/consent", data=form, headers={"Sec-Fetch-Site": "cross-site", "Origin": "null"})
    assert cross_site_fetch.status_code == 403
    same_site = client.post("/consent", data=form, headers={"Sec-Fetch-Site": "same-origin", "Origin": "null"})
    assert same_site.status_code in (200, 303)
    assert client.get(f"/v1/consent/{request['authRequestId']}").status_code == 410


def test_delegation_from_suspended_agent_rejected(client: httpx.Client) -> None:
    developer = signup(client, mode="sandbox")
    auth = bearer(developer["apiKey"])
    parent_agent = client.post("/v1/agents", json={"name": "parent"}, headers=auth).json()
    child_agent = client.post("/v1/agents", json={"name": "child"}, headers=auth).json()
    request = client.post(
        "/v1/authorize", json={"agentId": parent_agent["agentId"], "principalId": "p", "scopes": ["a"]}, headers=auth
    ).json()
    parent = client.post("/v1/token", json={"code": request["code"], "agentId": parent_agent["agentId"]}, headers=auth)
    client.patch(f"/v1/agents/{parent_agent['agentId']}", json={"status": "suspended"}, headers=auth)

    body = {"parentGrantToken": parent.json()["grantToken"], "subAgentId": child_agent["agentId"], "scopes": ["a", "a"]}
    response = client.post("/v1/grants/delegate", json=body, headers=auth)
    assert response.status_code == 400
    assert response.json()["message"] == "Parent grant's agent is suspended"

    client.patch(f"/v1/agents/{parent_agent['agentId']}", json={"status": "active"}, headers=auth)
    allowed = client.post("/v1/grants/delegate", json=body, headers=auth)
    assert allowed.status_code == 201
    assert allowed.json()["scopes"] == ["a"]
