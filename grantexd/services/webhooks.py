"""Webhook endpoints and the events queued for them.

An event is queued with ``enqueue_event`` inside the transaction that makes the change it
reports, so it commits or rolls back with that change. Queuing writes one delivery row per
subscribed endpoint, holding the exact JSON bytes to send, and a NOTIFY that wakes the
delivery workers on commit. Sending is the job of ``grantexd.workers.webhook_delivery``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import trio

from grantexd.crypto.ids import new_id
from grantexd.errors import BadRequest, Conflict, NotFound
from grantexd.logging import get_logger
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso
from grantexd.services.webhook_targets import TargetPolicy, TargetRejected, resolve_target, url_problem
from grantexd.store import webhooks as webhook_store
from grantexd.store.database import Transaction
from grantexd.store.developers import Developer
from grantexd.store.grants import RevokedGrant
from grantexd.store.webhooks import Delivery, DeliveryStatus, NewEvent, Webhook

log = get_logger()

EventType = Literal["grant.created", "grant.revoked", "token.issued", "anomaly.detected", "webhook.test"]

# The events an endpoint can subscribe to. webhook.test goes only to the endpoint it tests.
SUBSCRIBABLE_EVENTS: tuple[EventType, ...] = ("grant.created", "grant.revoked", "token.issued", "anomaly.detected")

MAX_WEBHOOKS_PER_DEVELOPER = 20
# Advisory lock purpose that serializes counting a developer's endpoints with adding one.
_WEBHOOK_QUOTA_LOCK = 5
# How long the replaced secret keeps signing deliveries after a rotation.
SECRET_ROTATION_GRACE = timedelta(hours=24)
_RESOLVE_TIMEOUT_SECONDS = 5
_DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed")


def target_policy(services: Services) -> TargetPolicy:
    return TargetPolicy(
        allow_private_hosts=services.config.webhook_allow_private_hosts,
        allow_insecure_urls=services.config.webhook_allow_insecure_urls,
    )


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _check_events(value: object) -> list[str]:
    known = ", ".join(SUBSCRIBABLE_EVENTS)
    if not isinstance(value, list) or not value:
        raise BadRequest(f"events must be a non-empty array of event types: {known}")
    events: list[str] = []
    for item in value:
        if not isinstance(item, str) or item not in SUBSCRIBABLE_EVENTS:
            described = repr(item[:100]) if isinstance(item, str) else "a non-string value"
            raise BadRequest(f"events contains {described}, which is not an event type; use one of: {known}")
        if item not in events:
            events.append(item)
    return events


async def _check_target(services: Services, url: str) -> None:
    """Resolve the URL's host and check its addresses, unless private hosts are allowed anyway."""
    policy = target_policy(services)
    if policy.allow_private_hosts:
        return
    try:
        with trio.fail_after(_RESOLVE_TIMEOUT_SECONDS):
            await resolve_target(url, policy)
    except trio.TooSlowError:
        raise BadRequest(f"url host could not be resolved within {_RESOLVE_TIMEOUT_SECONDS} seconds") from None
    except TargetRejected as exc:
        raise BadRequest(f"url is not allowed: {exc}") from None


async def create_webhook(services: Services, developer: Developer, body: object) -> Webhook:
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    url = body.get("url")
    problem = url_problem(url, target_policy(services))
    if problem is not None:
        raise BadRequest(problem)
    assert isinstance(url, str)
    events = _check_events(body.get("events"))
    await _check_target(services, url)
    async with services.db.transaction() as tx:
        await tx.advisory_lock(developer.id, _WEBHOOK_QUOTA_LOCK)
        if await webhook_store.count_webhooks(tx, developer.id) >= MAX_WEBHOOKS_PER_DEVELOPER:
            raise Conflict(
                f"A developer may register at most {MAX_WEBHOOKS_PER_DEVELOPER} webhooks; delete one first"
            )
        webhook = await webhook_store.insert_webhook(tx, new_id("wh"), developer.id, url, events, _new_secret())
    log.info("webhook.created", developerId=developer.id, webhookId=webhook.id, events=events)
    return webhook


async def list_webhooks(services: Services, developer: Developer) -> list[Webhook]:
    return await webhook_store.list_webhooks(services.db, developer.id)


async def _find_webhook(services: Services, developer: Developer, webhook_id: str) -> Webhook:
    webhook = await webhook_store.find_webhook(services.db, developer.id, webhook_id)
    if webhook is None:
        raise NotFound("Webhook not found")
    return webhook


async def delete_webhook(services: Services, developer: Developer, webhook_id: str) -> None:
    if not await webhook_store.delete_webhook(services.db, developer.id, webhook_id):
        raise NotFound("Webhook not found")
    log.info("webhook.deleted", developerId=developer.id, webhookId=webhook_id)


async def rotate_secret(services: Services, developer: Developer, webhook_id: str) -> Webhook:
    webhook = await webhook_store.rotate_secret(
        services.db, developer.id, webhook_id, _new_secret(), SECRET_ROTATION_GRACE.total_seconds()
    )
    if webhook is None:
        raise NotFound("Webhook not found")
    log.info("webhook.secret.rotated", developerId=developer.id, webhookId=webhook_id)
    return webhook


def read_status_filter(value: str | None) -> DeliveryStatus | None:
    if value is None:
        return None
    for status in _DELIVERY_STATUSES:
        if value == status:
            return status
    raise BadRequest(f"status must be one of {', '.join(_DELIVERY_STATUSES)}, got {value[:100]!r}")


async def list_deliveries(
    services: Services,
    developer: Developer,
    webhook_id: str,
    status: DeliveryStatus | None,
    limit: int | None,
    offset: int,
) -> list[Delivery]:
    await _find_webhook(services, developer, webhook_id)
    return await webhook_store.list_deliveries(services.db, webhook_id, status, limit, offset)


async def send_test_event(services: Services, developer: Developer, webhook_id: str) -> Delivery:
    """Queue a ``webhook.test`` event for this endpoint only, whatever it subscribes to."""
    async with services.db.transaction() as tx:
        webhook = await webhook_store.find_webhook(tx, developer.id, webhook_id)
        if webhook is None:
            raise NotFound("Webhook not found")
        event = _new_event(developer.id, "webhook.test", {"webhookId": webhook_id}, services.now())
        delivery_id = new_id("whd")
        await webhook_store.insert_deliveries(tx, event, [delivery_id], [webhook_id])
        delivery = await webhook_store.find_delivery(tx, webhook_id, delivery_id)
    assert delivery is not None
    log.info("webhook.test.queued", developerId=developer.id, webhookId=webhook_id, eventId=event.id)
    return delivery


async def retry_delivery(services: Services, developer: Developer, webhook_id: str, delivery_id: str) -> Delivery:
    """Make a pending or failed delivery due now; a failed one gets exactly one more attempt."""
    async with services.db.transaction() as tx:
        if await webhook_store.find_webhook(tx, developer.id, webhook_id) is None:
            raise NotFound("Webhook not found")
        delivery = await webhook_store.lock_delivery(tx, webhook_id, delivery_id)
        if delivery is None:
            raise NotFound("Delivery not found")
        if delivery.status == "delivered":
            raise Conflict("Delivery was already delivered")
        if delivery.leased:
            raise Conflict("Delivery is being attempted now; list the deliveries to see its outcome")
        max_attempts = delivery.max_attempts if delivery.status == "pending" else delivery.attempts + 1
        delivery = await webhook_store.schedule_now(tx, delivery_id, max_attempts)
    log.info("webhook.delivery.retry_requested", developerId=developer.id, webhookId=webhook_id, deliveryId=delivery_id)
    return delivery


def _new_event(developer_id: str, event_type: EventType, data: dict[str, Any], created_at: datetime) -> NewEvent:
    event_id = new_id("evt")
    envelope = {"id": event_id, "type": event_type, "createdAt": to_iso(created_at), "data": data}
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return NewEvent(id=event_id, type=event_type, developer_id=developer_id, body=body)


async def enqueue_event(
    tx: Transaction,
    developer_id: str,
    event_type: EventType,
    data: dict[str, Any],
    created_at: datetime | None = None,
) -> str | None:
    """Queue an event for every endpoint of the developer subscribed to its type, inside ``tx``.

    Returns the event id, or None when no endpoint subscribes and nothing was written.
    """
    webhook_ids = await webhook_store.find_subscribed_webhook_ids(tx, developer_id, event_type)
    if not webhook_ids:
        return None
    event = _new_event(developer_id, event_type, data, created_at or datetime.now(timezone.utc))
    await _insert_event(tx, event, webhook_ids)
    return event.id


async def _insert_event(tx: Transaction, event: NewEvent, webhook_ids: list[str]) -> None:
    delivery_ids = [new_id("whd") for _ in webhook_ids]
    await webhook_store.insert_deliveries(tx, event, delivery_ids, webhook_ids)


async def enqueue_grant_created(
    tx: Transaction,
    developer_id: str,
    *,
    grant_id: str,
    agent_id: str,
    principal_id: str,
    scopes: Sequence[str],
    expires_at: datetime,
    parent_grant_id: str | None = None,
    delegation_depth: int = 0,
) -> None:
    """Queue ``grant.created``; a delegated grant adds ``delegationDepth`` and ``parentGrantId``."""
    data: dict[str, Any] = {
        "grantId": grant_id,
        "agentId": agent_id,
        "principalId": principal_id,
        "scopes": list(scopes),
        "expiresAt": to_iso(expires_at),
    }
    if parent_grant_id is not None:
        data["delegationDepth"] = delegation_depth
        data["parentGrantId"] = parent_grant_id
    await enqueue_event(tx, developer_id, "grant.created", data)


async def enqueue_token_issued(
    tx: Transaction,
    developer_id: str,
    *,
    token_id: str,
    grant_id: str,
    agent_id: str,
    principal_id: str,
    scopes: Sequence[str],
    expires_at: datetime,
) -> None:
    data = {
        "tokenId": token_id,
        "grantId": grant_id,
        "agentId": agent_id,
        "principalId": principal_id,
        "scopes": list(scopes),
        "expiresAt": to_iso(expires_at),
    }
    await enqueue_event(tx, developer_id, "token.issued", data)


async def enqueue_grants_revoked(tx: Transaction, developer_id: str, revoked: Sequence[RevokedGrant]) -> None:
    """Queue one ``grant.revoked`` per revoked grant; ``cascade`` is true for the descendants."""
    webhook_ids = await webhook_store.find_subscribed_webhook_ids(tx, developer_id, "grant.revoked")
    if not webhook_ids:
        return
    now = datetime.now(timezone.utc)
    for grant in revoked:
        data = {"grantId": grant.id, "cascade": not grant.is_root}
        await _insert_event(tx, _new_event(developer_id, "grant.revoked", data, now), webhook_ids)
