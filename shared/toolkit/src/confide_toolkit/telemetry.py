"""OpenTelemetry tracing: one trace from the HTTP request into the outbox row, the Kafka record
and every consumer's span (DESIGN rule 10).

The producer writes `current_traceparent()` into the outbox row (it becomes the envelope's
`traceparent`); the inbox runs each event's handler in a CONSUMER span whose parent is
`trace_parent(envelope.traceparent)`.
Only the W3C `traceparent` crosses service boundaries: baggage is never propagated, since it is
free-form and could carry personal data.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

logger = logging.getLogger(__name__)

TRACEPARENT_HEADER: Final = "traceparent"

Exporter = Literal["none", "console", "otlp"]

_PROPAGATOR = TraceContextTextMapPropagator()
_configure_lock = threading.Lock()
_provider: TracerProvider | None = None

REDACTED: Final = "[redacted]"

# Client addresses and user agents identify people (DESIGN rule 5: IP addresses are personal
# data); the HTTP instrumentation records them by default.
_PERSONAL_ATTRIBUTES: Final = frozenset(
    {
        "client.address",
        "client.port",
        "net.peer.ip",
        "net.peer.port",
        "net.peer.name",
        "net.sock.peer.addr",
        "net.sock.peer.port",
        "network.peer.address",
        "network.peer.port",
        "http.client_ip",
        "http.user_agent",
        "user_agent.original",
        "url.query",
    }
)
# A query string may carry anything a client put there: keep the path only.
_URL_ATTRIBUTES: Final = frozenset({"http.url", "url.full", "http.target"})


def _scrub_server_span(span: trace.Span, scope: Mapping[str, Any]) -> None:
    """Overwrite the attributes that can identify a person; runs as the FastAPI
    instrumentation's request hook, after it recorded them and before any exporter sees them."""
    attributes: Mapping[str, AttributeValue] = getattr(span, "attributes", None) or {}
    for name, value in list(attributes.items()):
        if name in _PERSONAL_ATTRIBUTES:
            span.set_attribute(name, REDACTED)
        elif name in _URL_ATTRIBUTES and isinstance(value, str) and "?" in value:
            span.set_attribute(name, value.split("?", 1)[0])


def tracer_provider(
    service_name: str, exporter: Exporter, *, record_spans: bool | None = None
) -> TracerProvider:
    """A tracer provider for `exporter` (see `configure_telemetry`), not yet installed."""
    record = exporter != "none" if record_spans is None else record_spans
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}),
        sampler=ParentBased(ALWAYS_ON if record else ALWAYS_OFF),
    )
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        # Imported here: only processes that export need the OTLP machinery loaded.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter != "none":
        raise ValueError(f"unknown exporter {exporter!r}")
    return provider


def configure_telemetry(
    service_name: str, exporter: Exporter, *, record_spans: bool | None = None
) -> TracerProvider:
    """Install the process's tracer provider (once; later calls return the same provider).

    `exporter`: "none" still gives every span its trace and span ids (they flow into events,
    Kafka headers and logs) but records nothing, since nothing would ship it: spans no exporter
    reads cost a consumer about a quarter of its CPU. A trace an upstream caller sampled is
    still recorded. "console" prints spans; "otlp" sends them over HTTP to the collector named
    by the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    `record_spans` overrides whether spans are recorded (tests that read spans in memory).
    """
    global _provider
    with _configure_lock:
        if _provider is None:
            _provider = tracer_provider(service_name, exporter, record_spans=record_spans)
            trace.set_tracer_provider(_provider)
        return _provider


def instrument_fastapi(app: FastAPI, tracer_provider: TracerProvider | None = None) -> None:
    """Give every request to `app` a server span (health probes excluded), continuing the
    caller's `traceparent` when one is sent. Client addresses, user agents and query strings
    are kept off the spans (DESIGN rule 5 counts IP addresses as personal data)."""
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider or _provider,
        excluded_urls="/healthz,/readyz",
        server_request_hook=_scrub_server_span,
        # One span per request; the per-message ASGI send/receive spans are noise.
        exclude_spans=["receive", "send"],
    )


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, for the outbox row / envelope; None outside
    any span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT_HEADER)


def context_from_traceparent(traceparent: str | None) -> Context:
    """A context whose parent is the span a `traceparent` names, for a span that continues the
    producer's trace. None or a malformed value gives an empty context: a new trace."""
    if not traceparent:
        return Context()
    return _PROPAGATOR.extract({TRACEPARENT_HEADER: traceparent}, context=Context())


_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A W3C `traceparent` of version 00, the one every Confide producer writes."""


def trace_parent(traceparent: str | None) -> tuple[Context, bool]:
    """The context a consumer span continues its producer's trace in, and whether the
    producer's span was sampled: when it was not (the sampled bit of the trace flags is clear),
    the parent-based sampler records no child of it either. None or a malformed value gives an
    empty context: a new trace, which the sampler decides about.

    Only the sampled bit counts: OpenTelemetry writes flags `02` (a random trace id) on the
    spans it does not sample, and taking only `00` for "not sampled" gave every record a span
    that recorded nothing (a third of a batch consumer's CPU). A version-00 value is parsed
    here: the propagator costs several times as much."""
    match = _VERSION_00.fullmatch(traceparent) if traceparent else None
    if match is None:
        # Another version, or none: as the propagator reads it.
        context = context_from_traceparent(traceparent)
        span_context = trace.get_current_span(context).get_span_context()
        return context, not span_context.is_valid or span_context.trace_flags.sampled
    trace_id, span_id, flags = match.groups()
    span_context = trace.SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(flags, 16)),
    )
    if not span_context.is_valid:  # an all-zero id
        return Context(), True
    parent = trace.set_span_in_context(trace.NonRecordingSpan(span_context), Context())
    return parent, span_context.trace_flags.sampled


def traceparent_sampled(traceparent: str | None) -> bool:
    """`trace_parent`'s answer to "was the producer's span sampled?" without building the
    context: a batch consumer asks it of every record and starts no span for most of them."""
    match = _VERSION_00.fullmatch(traceparent) if traceparent else None
    if match is None:
        return trace_parent(traceparent)[1]
    trace_id, span_id, flags = match.groups()
    all_zero = not int(trace_id, 16) or not int(span_id, 16)  # a new trace, as trace_parent
    return all_zero or bool(int(flags, 16) & trace.TraceFlags.SAMPLED)


def kafka_trace_headers(traceparent: str | None) -> list[tuple[str, bytes]]:
    """Kafka record headers carrying a `traceparent` (a copy of the envelope's, for tooling
    that reads headers); empty when there is none."""
    if not traceparent:
        return []
    return [(TRACEPARENT_HEADER, traceparent.encode("ascii"))]


def traceparent_from_kafka_headers(headers: Iterable[tuple[str, bytes | None]]) -> str | None:
    """The `traceparent` among Kafka record headers, if any."""
    for name, value in headers:
        if name.lower() == TRACEPARENT_HEADER and value:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None
