"""One JSON line per log record, with trace ids, and never a personal-data field in clear."""

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from confide_toolkit.logs import REDACTED, configure_logging
from opentelemetry.sdk.trace import TracerProvider

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def lines() -> Iterator[Lines]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configure_logging("consent", "DEBUG", stream=stream)
    ours = root.handlers[-1]

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield read
    root.removeHandler(ours)
    root.setLevel(level)


def test_each_record_is_one_json_line_with_the_standard_fields(lines: Lines) -> None:
    logging.getLogger("confide_consent.handlers").info(
        "consent %s granted", "c-1", extra={"consent_id": "c-1", "purpose": "research"}
    )
    [line] = lines()
    assert line["level"] == "INFO"
    assert line["logger"] == "confide_consent.handlers"
    assert line["message"] == "consent c-1 granted"
    assert line["service"] == "consent"
    assert line["consent_id"] == "c-1" and line["purpose"] == "research"
    assert line["time"].endswith("Z")
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert "trace_id" not in line and "span_id" not in line


def test_records_inside_a_span_carry_its_trace_and_span_ids(lines: Lines) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logging.getLogger("confide_consent").warning("slow")
    [line] = lines()
    context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_personal_data_fields_are_redacted(lines: Lines) -> None:
    logging.getLogger("confide_identity").info(
        "registered",
        extra={
            "email": "alice@example.com",
            "password": "hunter22",
            "display_name": "Alice",
            "card_number": "4111111111111111",
            "cvc": "123",
            "recipient_email": "bob@example.com",
            "client_ip_address": "203.0.113.9",
            "request": {"body": "I feel sad", "items": [{"phone": "+33 6 12"}]},
            "subject_id": "0190-pseudonymous",
        },
    )
    [line] = lines()
    for field in (
        "email",
        "password",
        "display_name",
        "card_number",
        "cvc",
        "recipient_email",
        "client_ip_address",
    ):
        assert line[field] == REDACTED
    assert line["request"] == {"body": REDACTED, "items": [{"phone": REDACTED}]}
    assert line["subject_id"] == "0190-pseudonymous"
    text = json.dumps(line)
    for secret in ("alice", "hunter22", "4111", "bob@", "203.0.113.9", "sad", "+33"):
        assert secret not in text


def test_exceptions_are_logged_by_type_and_stack_without_their_message(lines: Lines) -> None:
    duplicate = "alice@example.com"
    try:
        raise ValueError(f"Key (email)=({duplicate}) already exists")
    except ValueError:
        logging.getLogger("confide_identity").exception("could not register")
    [line] = lines()
    assert line["exception_type"] == "builtins.ValueError"
    assert "test_logs.py" in line["stack"]
    assert "alice" not in json.dumps(line)


def test_configuring_again_replaces_the_handler(lines: Lines) -> None:
    stream = io.StringIO()
    configure_logging("consent", stream=stream)
    ours = logging.getLogger().handlers[-1]
    try:
        logging.getLogger("x").info("once")
        assert len(stream.getvalue().splitlines()) == 1
        assert lines() == []  # the first handler is gone
    finally:
        logging.getLogger().removeHandler(ours)
