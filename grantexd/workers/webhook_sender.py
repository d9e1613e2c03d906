"""One webhook delivery attempt over HTTP, with every receiver failure turned into data.

An attempt resolves the target's host and checks every address (``webhook_targets``). It
connects to the first address, while the URL's host name stays in the ``Host`` header and in
TLS (SNI and certificate check). It POSTs the stored body and reads at most
``MAX_REPLY_BYTES`` of the reply.
Redirects are not followed. Any 2xx status is success. Another status, a timeout, a refused
or reset connection, a TLS or DNS failure, or a reply that is not HTTP becomes an
``AttemptResult`` with an error text. ``send_attempt`` does not raise for any of those.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

import httpx
import trio

from grantexd.services.webhook_targets import TargetPolicy, TargetRejected, resolve_target
from grantexd.webhook_signatures import (
    PREVIOUS_SIGNATURE_HEADER,
    PREVIOUS_SIGNATURE_V2_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_V2_HEADER,
    TIMESTAMP_HEADER,
    sign_body,
    sign_timestamped_body,
)

USER_AGENT = "Grantex-Webhooks/0.1"
MAX_REPLY_BYTES = 64 * 1024
MAX_ERROR_LENGTH = 500
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class AttemptResult:
    delivered: bool
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class OutgoingDelivery:
    url: str
    body: bytes
    secret: str
    previous_secret: str | None


def open_client(timeout_seconds: float) -> httpx.AsyncClient:
    """Return the client for all attempts of one worker.

    Connections are never reused: each attempt connects to an address checked for it, and a
    pooled TLS connection could otherwise carry a request for one host name over a session
    negotiated for another. Proxy variables are ignored for the same reason.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        verify=ssl.create_default_context(),
    )


def signature_headers(delivery: OutgoingDelivery, timestamp: str) -> dict[str, str]:
    headers = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign_body(delivery.secret, delivery.body),
        SIGNATURE_V2_HEADER: sign_timestamped_body(delivery.secret, timestamp, delivery.body),
    }
    if delivery.previous_secret is not None:
        headers[PREVIOUS_SIGNATURE_HEADER] = sign_body(delivery.previous_secret, delivery.body)
        headers[PREVIOUS_SIGNATURE_V2_HEADER] = sign_timestamped_body(
            delivery.previous_secret, timestamp, delivery.body
        )
    return headers


def _describe(exc: BaseException) -> str:
    """Return the exception's message, or the first message in its causes when it has none.

    httpx raises some errors, such as a failed TLS handshake, with an empty message and the
    detail on the wrapped exception.
    """
    current: BaseException | None = exc
    for _ in range(5):
        if current is None:
            break
        if str(current):
            return str(current)[:MAX_ERROR_LENGTH]
        current = current.__cause__ or current.__context__
    return type(exc).__name__


async def send_attempt(
    client: httpx.AsyncClient, delivery: OutgoingDelivery, policy: TargetPolicy, timeout_seconds: float
) -> AttemptResult:
    """Make one attempt within ``timeout_seconds`` in total, DNS resolution included.

    When the status line arrives in time but the body does not, the status still decides.
    """
    deadline = trio.current_time() + timeout_seconds
    with trio.move_on_at(deadline) as scope:
        opened = await _open_response(client, delivery, policy)
    if scope.cancelled_caught:
        return AttemptResult(delivered=False, error=f"the attempt timed out after {timeout_seconds:g} s")
    if isinstance(opened, AttemptResult):
        return opened
    response = opened
    try:
        with trio.move_on_at(deadline):
            await _read_capped(response)
    finally:
        with trio.move_on_after(1) as closing:
            closing.shield = True
            try:
                await response.aclose()
            except (httpx.HTTPError, OSError, ssl.SSLError):
                pass  # The connection is discarded either way.
    return _classify(response)


async def _open_response(
    client: httpx.AsyncClient, delivery: OutgoingDelivery, policy: TargetPolicy
) -> httpx.Response | AttemptResult:
    """Resolve, check, connect and send; return the response with its body unread, or the failure.

    The resolved addresses are tried in resolver order until one accepts the connection, as
    other HTTP clients do, so a host with an IPv6 address that does not listen still works.
    """
    try:
        target = await resolve_target(delivery.url, policy)
    except TargetRejected as exc:
        return AttemptResult(delivered=False, error=_describe(exc))

    original = httpx.URL(delivery.url)
    headers = {
        # The Host header as the original URL gives it, with the port only when it is not the default.
        "Host": original.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **signature_headers(delivery, str(int(time.time()))),
    }
    extensions = {"sni_hostname": target.hostname} if target.parts.scheme == "https" else {}
    failures: list[str] = []
    for address in target.addresses:
        request = client.build_request(
            "POST", original.copy_with(host=str(address)), content=delivery.body, headers=headers, extensions=extensions
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failures.append(f"connection to {address} failed: {_describe(exc)}")
        except httpx.TimeoutException as exc:
            return AttemptResult(delivered=False, error=f"request to {address} timed out: {_describe(exc)}")
        except httpx.RemoteProtocolError as exc:
            return AttemptResult(delivered=False, error=f"the reply is not valid HTTP: {_describe(exc)}")
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            return AttemptResult(delivered=False, error=f"request to {address} failed: {_describe(exc)}")
    return AttemptResult(delivered=False, error="; ".join(failures)[:MAX_ERROR_LENGTH])


def _classify(response: httpx.Response) -> AttemptResult:
    status_code = response.status_code
    if 200 <= status_code <= 299:
        return AttemptResult(delivered=True, status_code=status_code)
    if status_code in _REDIRECT_STATUSES:
        location = response.headers.get("Location", "")[:200]
        return AttemptResult(
            delivered=False,
            status_code=status_code,
            error=f"the receiver answered with redirect status {status_code} to {location!r}; "
            "redirects are not followed",
        )
    return AttemptResult(
        delivered=False, status_code=status_code, error=f"the receiver answered with status {status_code}"
    )


async def _read_capped(response: httpx.Response) -> None:
    """Read and discard at most MAX_REPLY_BYTES of the reply body, undecoded.

    The status decides the outcome, so an error while reading the body does not fail the attempt.
    """
    received = 0
    try:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received >= MAX_REPLY_BYTES:
                return
    except (httpx.HTTPError, OSError, ssl.SSLError):
        return
