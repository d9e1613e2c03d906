"""OpenTelemetry spans sent to a local OTLP/HTTP receiver, and flushed on SIGTERM."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support import Backends, Daemon, bearer, new_daemon, signup
from tests.webhook_receiver import running_receiver


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, dict[str, object]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                export = ExportTraceServiceRequest()
                export.ParseFromString(body)
                for resource_spans in export.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for item in scope_spans.spans:
                            attributes = {attribute.key: attribute.value for attribute in item.attributes}
                            receiver.spans.append((item.name, item.trace_id.hex(), item.parent_span_id.hex(), attributes))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *arguments: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def names(self) -> list[str]:
        return [name for name, _, _, _ in self.spans]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    otlp.thread.start()
    yield otlp
    otlp.server.shutdown()


def test_spans_flushed_on_sigterm(backends: Backends, database_url: str, receiver: OtlpReceiver) -> None:
    # A one-minute batch delay: the spans can only arrive through the flush at shutdown.
    daemon: Daemon = new_daemon(
        backends, database_url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="60000"
    )
    daemon.start()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    try:
        with httpx.Client(base_url=daemon.base_url) as client, running_receiver() as webhook_receiver:
            developer = signup(client)
            auth = bearer(developer["apiKey"])
            hook = client.post(
                "/v1/webhooks", json={"url": webhook_receiver.url("/hook"), "events": ["token.issued"]}, headers=auth
            )
            assert hook.status_code == 201, hook.text
            agent = client.post("/v1/agents", json={"name": "t"}, headers=auth).json()
            request = client.post(
                "/v1/authorize", json={"agentId": agent["agentId"], "principalId": "p", "scopes": ["s"]}, headers=auth
            ).json()
            response = client.post(
                "/v1/token",
                json={"code": request["code"], "agentId": agent["agentId"]},
                headers={**auth, "traceparent": traceparent},
            )
            assert response.status_code == 201
            verified = client.post("/v1/tokens/verify", json={"token": response.json()["grantToken"]}, headers=auth)
            assert verified.json()["valid"] is True
            assert len(webhook_receiver.wait_for(1, "/hook")) == 1
        assert receiver.spans == []
    finally:
        assert daemon.stop() == 0

    names = receiver.names()
    assert "POST /v1/token" in names
    assert "db.query" in names
    assert "jwt.sign" in names
    assert "redis.command" in names
    assert "webhook.attempt" in names
    token_spans = [entry for entry in receiver.spans if entry[0] == "POST /v1/token"]
    assert token_spans[0][1] == trace_id
    assert token_spans[0][2] == "00f067aa0ba902b7"
    signing = [entry for entry in receiver.spans if entry[0] == "jwt.sign"]
    assert signing[0][1] == trace_id

    token_lines = [line for line in daemon.json_lines() if line.get("route") == "/v1/token"]
    assert token_lines[0]["traceId"] == trace_id
