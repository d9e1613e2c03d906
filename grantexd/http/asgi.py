"""An ASGI wrapper that lets Hypercorn close idle keep-alive connections on shutdown.

Quart-Trio (0.12) runs each request as two tasks in one nursery and cancels the nursery as
soon as either finishes. The last ``send`` of a response makes Hypercorn (0.18) recycle the
connection and start its idle-timeout task from inside that call; when the disconnect message
wins the race, the cancellation lands in the middle of that start, the idle task never runs,
and the connection is neither closed after ``keep_alive_timeout`` nor when shutdown begins.
Graceful shutdown then waits the whole grace period for every idle client. Shielding only
the final ``http.response.body`` message lets that bookkeeping finish; Hypercorn already
shields the socket write itself, so this adds no new way to block.
"""

from __future__ import annotations

from typing import Any

import trio


class ShieldFinalSend:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_shielding_final_body(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, send_shielding_final_body)
