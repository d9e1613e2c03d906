"""OpenTelemetry tracing, exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Without the endpoint, the OpenTelemetry API's default no-op tracer is used, so the spans in
request handling, database and Redis calls and token signing cost almost nothing. With it,
spans go to ``<endpoint>/v1/traces`` from the SDK's background export thread, and
``shutdown_tracing`` flushes what is pending before the process exits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from werkzeug.datastructures import Headers
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from grantexd import __version__
from grantexd.logging import get_logger

log = get_logger()

_tracer = trace.get_tracer("grantexd", __version__)
_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None


def setup_tracing(endpoint: str) -> None:
    """Send spans to the OTLP/HTTP collector at ``endpoint``."""
    # Imported here so that a daemon without tracing never loads the exporter and protobuf.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    global _provider, _tracer
    provider = TracerProvider(resource=Resource.create({"service.name": "grantexd", "service.version": __version__}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
    _provider = provider
    _tracer = provider.get_tracer("grantexd", __version__)
    log.info("startup.tracing.enabled", endpoint=endpoint)


def shutdown_tracing() -> None:
    """Export pending spans and stop the exporter; waits at most the SDK's export timeout."""
    if _provider is not None:
        _provider.shutdown()
        log.info("shutdown.tracing.flushed")


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def start_request_span(method: str, route: str | None, headers: Headers | Mapping[str, str]) -> tuple[Span, object]:
    """Start the server span of a request, continuing the caller's W3C traceparent if present.

    Returns the span and the context token to pass to ``end_request_span``.
    """
    parent = _propagator.extract(carrier={name.lower(): value for name, value in headers.items()})
    request_span = _tracer.start_span(
        f"{method} {route or 'unmatched'}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route or "unmatched"},
    )
    token = otel_context.attach(trace.set_span_in_context(request_span, parent))
    return request_span, token


def end_request_span(request_span: Span, token: object, status: int) -> None:
    request_span.set_attribute("http.response.status_code", status)
    if status >= 500:
        request_span.set_status(Status(StatusCode.ERROR))
    request_span.end()
    otel_context.detach(token)  # type: ignore[arg-type]


def trace_id_of(request_span: Span) -> str | None:
    """Return the span's trace id as 32 hex digits, or None when tracing is off."""
    span_context = request_span.get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")
