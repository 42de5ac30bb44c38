"""Where a consumer span starts: in its producer's trace, unless the producer's span was not
sampled (then the parent-based sampler would record nothing, and no span is started)."""

from __future__ import annotations

from confide_toolkit.inbox import trace_parent
from opentelemetry import trace

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
