"""Webhook routes: register, list and delete endpoints, rotate secrets, inspect and retry deliveries."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from grantexd.http.requests import current_developer, query_text, read_json_body, read_page
from grantexd.http.responses import json_response, no_content
from grantexd.http.state import RuntimeState
from grantexd.services import webhooks
from grantexd.services.context import Services
from grantexd.services.timefmt import to_iso
from grantexd.store.webhooks import Delivery, Webhook


def webhook_json(webhook: Webhook, *, include_secret: bool = False) -> dict[str, Any]:
    """Render an endpoint; the secret is shown only in the create and rotate responses."""
    body: dict[str, Any] = {
        "id": webhook.id,
        "url": webhook.url,
        "events": webhook.events,
        "createdAt": to_iso(webhook.created_at),
    }
    if include_secret:
        body["secret"] = webhook.secret
    if webhook.previous_secret_expires_at is not None:
        body["previousSecretExpiresAt"] = to_iso(webhook.previous_secret_expires_at)
    return body


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    def optional_time(value: Any) -> str | None:
        return None if value is None else to_iso(value)

    return {
        "id": delivery.id,
        "webhookId": delivery.webhook_id,
        "eventId": delivery.event_id,
        "eventType": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "maxAttempts": delivery.max_attempts,
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error,
        "lastAttemptAt": optional_time(delivery.last_attempt_at),
        "nextAttemptAt": to_iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "deliveredAt": optional_time(delivery.delivered_at),
        "createdAt": to_iso(delivery.created_at),
    }


def create_blueprint(services: Services, state: RuntimeState) -> Blueprint:
    blueprint = Blueprint("webhooks", __name__)

    @blueprint.post("/v1/webhooks")
    async def create_webhook() -> Response:
        developer = await current_developer(services)
        webhook = await webhooks.create_webhook(services, developer, await read_json_body())
        return json_response(webhook_json(webhook, include_secret=True), 201)

    @blueprint.get("/v1/webhooks")
    async def list_webhooks() -> Response:
        developer = await current_developer(services)
        found = await webhooks.list_webhooks(services, developer)
        return json_response({"webhooks": [webhook_json(webhook) for webhook in found]})

    @blueprint.delete("/v1/webhooks/<webhook_id>")
    async def delete_webhook(webhook_id: str) -> Response:
        developer = await current_developer(services)
        await webhooks.delete_webhook(services, developer, webhook_id)
        return no_content()

    @blueprint.post("/v1/webhooks/<webhook_id>/rotate-secret")
    async def rotate_secret(webhook_id: str) -> Response:
        developer = await current_developer(services)
        webhook = await webhooks.rotate_secret(services, developer, webhook_id)
        return json_response(webhook_json(webhook, include_secret=True))

    @blueprint.post("/v1/webhooks/<webhook_id>/test")
    async def send_test_event(webhook_id: str) -> Response:
        developer = await current_developer(services)
        delivery = await webhooks.send_test_event(services, developer, webhook_id)
        return json_response(delivery_json(delivery), 202)

    @blueprint.get("/v1/webhooks/<webhook_id>/deliveries")
    async def list_deliveries(webhook_id: str) -> Response:
        developer = await current_developer(services)
        page = read_page()
        status = webhooks.read_status_filter(query_text("status"))
        found = await webhooks.list_deliveries(services, developer, webhook_id, status, page.limit, page.offset)
        return json_response({"deliveries": [delivery_json(delivery) for delivery in found]})

    @blueprint.post("/v1/webhooks/<webhook_id>/deliveries/<delivery_id>/retry")
    async def retry_delivery(webhook_id: str, delivery_id: str) -> Response:
        developer = await current_developer(services)
        delivery = await webhooks.retry_delivery(services, developer, webhook_id, delivery_id)
        return json_response(delivery_json(delivery), 202)

    return blueprint
