"""One request is one trace, through the outbox, Kafka and every consumer that handled what it
caused, across services: checked from the spans each process exported (printed into its log by
the "console" exporter)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from confide_testing.processes import ServiceProcess, ServiceProcesses

from .load import (
    CATCH_UP_SECONDS,
    clients_with_consents,
    message_in_a_new_conversation,
    retry,
    signed_in,
)

pytestmark = pytest.mark.integration

SPANS = {"CONFIDE_OTEL_EXPORTER": "console"}


def exported_spans(service: ServiceProcess) -> list[dict[str, Any]]:
    """Every span the service printed: pretty JSON objects among its one-line JSON logs."""
    text = service.log()
    decoder = json.JSONDecoder()
    spans = []
    at = text.find("{")
    while at != -1:
        try:
            found, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
            continue
        if isinstance(found, dict) and "context" in found and "kind" in found:
            spans.append(found)
        at = text.find("{", end)
    return spans


def _trace_of(spans: list[dict[str, Any]], name_contains: str) -> set[str]:
    return {s["context"]["trace_id"] for s in spans if name_contains in s["name"]}


async def reached(traces: set[str], consumers: list[tuple[ServiceProcess, str]]) -> set[str]:
    """Wait until each (service, span name) consumer exported a span in one of `traces` (the
    events cross Kafka meanwhile); the traces every one of them reached."""
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while True:
        found = [_trace_of(exported_spans(service), name) for service, name in consumers]
        common = traces.intersection(*found)
        if common:
            return common
        if time.monotonic() > deadline:
            pytest.fail(f"traces {traces} did not reach every consumer: {found}")
        await asyncio.sleep(0.5)


async def test_closing_an_account_is_one_trace_across_identity_consent_and_messaging(
    processes: ServiceProcesses,
) -> None:
    identity = processes.start("identity", SPANS)
    consent = processes.start("consent", SPANS)
    messaging = processes.start("messaging", SPANS)
    async with httpx.AsyncClient(timeout=30) as http:
        [(_, auth, _)] = await clients_with_consents(http, identity.url, consent.url, 1)
        closed = await retry(
            "close", lambda: http.post(f"{identity.url}/v1/accounts/me/close", headers=auth), 202
        )
        assert closed.status_code == 202

    # identity's HTTP span starts the trace ...
    [trace_id] = _trace_of(exported_spans(identity), "/v1/accounts/me/close")
    # ... consent consumes AccountClosed in it, and its ConsentRevoked carries it on, through
    # consent's outbox and Kafka, to messaging's consumer.
    await reached(
        {trace_id},
        [
            (consent, "consume confide.identity.AccountClosed"),
            (messaging, "consume confide.consent.ConsentRevoked"),
        ],
    )
    consumer_spans = [
        s
        for service in (consent, messaging)
        for s in exported_spans(service)
        if s["context"]["trace_id"] == trace_id
    ]
    assert {s["kind"] for s in consumer_spans} >= {"SpanKind.CONSUMER"}


async def test_a_posted_message_is_one_trace_from_messaging_to_its_consumers(
    processes: ServiceProcesses,
) -> None:
    identity = processes.start("identity", SPANS)
    messaging = processes.start("messaging", SPANS)
    retention = processes.start("retention", SPANS)
    async with httpx.AsyncClient(timeout=30) as http:
        _, client = await signed_in(http, identity.url, "traced", role="client")
        therapist_id, _ = await signed_in(http, identity.url, "tracer", role="therapist")
        await message_in_a_new_conversation(
            http, messaging.url, client, therapist_id, "one trace, please"
        )

    # messaging's HTTP span starts the trace ...
    # (one per attempt: a retried 503 wrote nothing, and its trace reaches nobody)
    posted = _trace_of(
        exported_spans(messaging), "POST /v1/conversations/{conversation_id}/messages"
    )
    assert posted, "messaging exported no span for the posted message"
    # ... and MessageSent carries it through messaging's outbox and Kafka to retention, which
    # starts the person's messages clock from it.
    traced = await reached(posted, [(retention, "consume confide.messaging.MessageSent")])
    consumed = [s for s in exported_spans(retention) if s["context"]["trace_id"] in traced]
    assert {s["kind"] for s in consumed} >= {"SpanKind.CONSUMER"}
    assert all(s["parent_id"] for s in consumed), "a consumer span started a trace of its own"
