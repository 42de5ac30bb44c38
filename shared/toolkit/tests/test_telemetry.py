"""One trace from the HTTP request to every consumer, and no personal data on the spans."""

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from confide_toolkit.problem import install_problem_handlers
from confide_toolkit.telemetry import (
    configure_telemetry,
    context_from_traceparent,
    current_traceparent,
    instrument_fastapi,
    kafka_trace_headers,
    trace_parent,
    traceparent_from_kafka_headers,
    traceparent_sampled,
    tracer_provider,
)
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="session")
def provider_and_exporter() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = configure_telemetry("confide-test", "none")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def provider(provider_and_exporter: tuple[TracerProvider, InMemorySpanExporter]) -> TracerProvider:
    return provider_and_exporter[0]


@pytest.fixture
def spans(
    provider_and_exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> Iterator[InMemorySpanExporter]:
    exporter = provider_and_exporter[1]
    exporter.clear()
    yield exporter
    exporter.clear()


def test_configuring_twice_keeps_the_first_provider(provider: TracerProvider) -> None:
    assert configure_telemetry("another-name", "console") is provider


def test_a_span_continuing_the_producers_traceparent_shares_its_trace(
    provider: TracerProvider, spans: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("handle request") as producer:
        traceparent = current_traceparent()
    producer_context = producer.get_span_context()
    assert traceparent is not None
    assert traceparent.startswith(
        f"00-{producer_context.trace_id:032x}-{producer_context.span_id:016x}-"
    )

    with tracer.start_as_current_span(
        "consume", context=context_from_traceparent(traceparent)
    ) as consumer:
        pass
    consumer_context = consumer.get_span_context()
    assert consumer_context.trace_id == producer_context.trace_id
    [finished] = [span for span in spans.get_finished_spans() if span.name == "consume"]
    assert finished.parent is not None and finished.parent.span_id == producer_context.span_id


def test_no_span_no_traceparent_and_a_missing_one_starts_a_new_trace(
    provider: TracerProvider,
) -> None:
    assert current_traceparent() is None
    for missing in (None, "", "not-a-traceparent"):
        with provider.get_tracer("test").start_as_current_span(
            "root", context=context_from_traceparent(missing)
        ) as span:
            assert span.get_span_context().is_valid
            assert span.parent is None  # type: ignore[attr-defined]


def test_kafka_headers_carry_the_traceparent() -> None:
    headers = kafka_trace_headers(INCOMING)
    assert headers == [("traceparent", INCOMING.encode())]
    assert traceparent_from_kafka_headers([("content-type", b"x"), *headers]) == INCOMING
    assert kafka_trace_headers(None) == []
    assert traceparent_from_kafka_headers([]) is None


@pytest.fixture
async def client(provider: TracerProvider) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/v1/things/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        return {"thing_id": thing_id}

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("alice@example.com")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    instrument_fastapi(app, provider)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False, client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def server_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]


async def test_requests_create_server_spans_that_continue_the_callers_trace(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    response = await client.get("/v1/things/7", headers={"traceparent": INCOMING})
    assert response.status_code == 200
    [span] = server_spans(spans)
    assert span.name == "GET /v1/things/{thing_id}"
    assert span.context.trace_id == int(INCOMING.split("-")[1], 16)

    await client.get("/v1/things/8")
    assert len(server_spans(spans)) == 2


async def test_server_spans_carry_no_client_address_nor_query(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    await client.get(
        "/v1/things/7?email=alice@example.com", headers={"user-agent": "Alice's phone"}
    )
    [span] = server_spans(spans)
    attributes = dict(span.attributes or {})
    text = repr(attributes)
    assert "203.0.113.9" not in text
    assert "alice" not in text.lower()
    assert "phone" not in text


async def test_failed_request_span_is_an_error_without_the_exception_text(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    response = await client.get("/v1/boom")
    assert response.status_code == 500
    [span] = server_spans(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert "alice" not in repr(span.to_json())
    for span in spans.get_finished_spans():
        assert "alice" not in span.to_json()


async def test_health_probes_are_not_traced(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert server_spans(spans) == []


def test_no_span_stays_current_after_the_tests_above() -> None:
    assert not trace.get_current_span().get_span_context().is_valid


def test_without_an_exporter_spans_are_not_recorded_but_keep_their_trace() -> None:
    provider = tracer_provider("confide-test", "none")
    recorded = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("handle request") as request:
        traceparent = current_traceparent()
    with tracer.start_as_current_span(
        "consume", context=context_from_traceparent(traceparent)
    ) as consumer:
        pass
    assert not request.is_recording() and recorded.get_finished_spans() == ()
    # The ids still flow into the outbox, the Kafka headers and the logs.
    assert request.get_span_context().is_valid
    assert consumer.get_span_context().trace_id == request.get_span_context().trace_id


def test_without_an_exporter_a_trace_sampled_upstream_is_still_recorded() -> None:
    provider = tracer_provider("confide-test", "none")
    recorded = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    with provider.get_tracer("test").start_as_current_span(
        "consume", context=context_from_traceparent(INCOMING)
    ):
        pass
    assert [span.name for span in recorded.get_finished_spans()] == ["consume"]


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"


def test_a_sampled_producer_span_is_the_parent() -> None:
    context, sampled = trace_parent(f"00-{TRACE_ID}-{SPAN_ID}-01")
    parent = trace.get_current_span(context).get_span_context()
    assert sampled
    assert (parent.trace_id, parent.span_id) == (int(TRACE_ID, 16), int(SPAN_ID, 16))
    assert parent.is_remote


def test_only_the_sampled_bit_of_the_flags_counts() -> None:
    # 02 is the W3C "random trace id" flag that OpenTelemetry sets on unsampled spans too.
    for flags in ("00", "02"):
        _, sampled = trace_parent(f"00-{TRACE_ID}-{SPAN_ID}-{flags}")
        assert not sampled, flags
    _, sampled = trace_parent(f"00-{TRACE_ID}-{SPAN_ID}-03")
    assert sampled


def test_no_or_a_malformed_traceparent_starts_a_new_trace() -> None:
    for traceparent in (
        None,
        "garbage",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{'0' * 32}-{SPAN_ID}-01",
    ):
        context, sampled = trace_parent(traceparent)
        assert not trace.get_current_span(context).get_span_context().is_valid, traceparent
        assert sampled, traceparent


def test_the_sampled_question_alone_gets_trace_parents_answer() -> None:
    # A batch consumer asks only this of most records; it must never disagree with the span
    # it would have started.
    for traceparent in (
        f"00-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-03",
        f"00-{TRACE_ID}-{SPAN_ID}-00",
        f"00-{TRACE_ID}-{SPAN_ID}-02",
        f"00-{'0' * 32}-{SPAN_ID}-00",
        f"00-{TRACE_ID}-{'0' * 16}-00",
        f"ff-{TRACE_ID}-{SPAN_ID}-00",
        "garbage",
        None,
    ):
        assert traceparent_sampled(traceparent) is trace_parent(traceparent)[1], traceparent
